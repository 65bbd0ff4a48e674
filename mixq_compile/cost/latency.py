"""The latency penalty: expected *measured* latency of the deployed model, differentiable in the bit logits.

The BitOPs penalty assumes fewer bits are faster; on a real backend they often are not (the torch backend stores
every width ≤ 8 in int8 containers). A :class:`LatencyTable` holds what was measured instead (see
:func:`mixq_compile.latency_table`, which times exported artifacts): the latency ``base_ms`` of the artifact with
every site at its highest candidate, and for each site ``s`` and candidate ``b`` the change ``Δ(s, b)`` when only
``s`` moves to ``b``. The model is additive, ``T(bits) ≈ base + Σ_s Δ(s, bits[s])`` (HAQ / HAWQ-V3 use the same
per-layer lookup): sites that share one op (a weight and its linear's input) are measured one at a time, so a
speed-up that needs both lowered together is split between them or missed. The penalty is the expectation of that
sum under each site's softmax:

    E[T] = base + Σ_s Σ_b p_{s,b} Δ(s, b)

divided by ``base`` (the all-highest latency, as the relative BitOPs penalty divides by the all-highest BitOPs),
so it lies in (0, ~1] and a λ means what it means for the default penalty; slightly above 1 where noise made a
lower width measure slower. With ``budget_ms`` it is the hinge ``relu(E[T] / budget_ms - 1)``.

This module holds only the table and the arithmetic (the "capture and passes" layer); measuring needs exported
artifacts and lives in :mod:`mixq_compile.latency_measure`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .. import cpu
from ..ir.plan import SitePlan
from ..quant.mixed import MixedQuantizer
from ..version import __version__

#: bumped when the JSON layout of a table changes (a cache of another layout is re-measured)
TABLE_FORMAT = 1


class LatencyTableError(ValueError):
    """A latency table that does not fit the model, the CPU or the question asked of it."""


def plan_digest(plan: SitePlan) -> str:
    """A short hash of the site plan (sites, kinds, shapes, specs, candidates, ops): two models with the same plan
    deploy the same program up to weights, so they share a table whatever their weights."""
    text = json.dumps(plan.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cpu_identity() -> dict:
    """What a latency depends on in the CPU: model, kernel level in force (``MIXQ_ISA`` included) and instruction
    sets. (The thread count is part of the measurement key, not of the CPU: a search may train with other threads
    than the deployment the table was measured for.)"""
    info = cpu.describe()
    return {key: info[key] for key in ("model", "level", "flags")}


def measurement_key(plan: SitePlan, shapes: list, backend: str, settings: Mapping) -> dict:
    """Everything a measured table depends on; a cached table is reused only when all of it is equal."""
    return {
        "format": TABLE_FORMAT,
        "cpu": cpu_identity(),
        "threads": torch.get_num_threads(),
        "backend": backend,
        "torch": torch.__version__,
        "mixq_compile": __version__,
        "plan": plan_digest(plan),
        "input_shapes": shapes,
        "settings": dict(settings),
    }


@dataclass(frozen=True)
class LatencyTable:
    """Measured latency of one model's artifact on one CPU and backend, in milliseconds.

    Attributes:
        base_ms: median latency with every site at its highest candidate.
        delta_ms: ``{site: {bits: Δ}}``, the change when only that site is at ``bits`` (0.0 at the highest).
        noise_ms: robust standard deviation (1.4826 × MAD) of the base timings taken between the others; a Δ
            within a few ``noise_ms`` is indistinguishable from zero (each Δ is a median of paired differences,
            so its own error is somewhat smaller).
        cpu: :func:`mixq_compile.cpu.summary` of the machine that measured it.
        backend: the backend the artifacts were exported to.
        key: the full measurement key (CPU identity, backend, versions, plan digest, input shapes, settings).
        base_samples_ms: every base timing, in the order taken.
    """

    base_ms: float
    delta_ms: dict[str, dict[int, float]]
    noise_ms: float
    cpu: str
    backend: str
    key: dict = field(default_factory=dict)
    base_samples_ms: tuple[float, ...] = ()

    def predict(self, bits: Mapping[str, int]) -> float:
        """Predicted latency (ms) of an assignment: ``base + Σ Δ(s, bits[s])``; sites not named stay at their
        highest candidate (Δ = 0)."""
        total = self.base_ms
        for site, width in bits.items():
            total += self._delta(site, int(width))
        return total

    def _delta(self, site: str, width: int) -> float:
        if site not in self.delta_ms:
            raise LatencyTableError(f"the latency table has no site {site!r}; its sites: {sorted(self.delta_ms)}")
        row = self.delta_ms[site]
        if width not in row:
            raise LatencyTableError(
                f"the latency table has no {width}-bit measurement for site {site!r} (measured: {sorted(row)}); "
                "measure it with bit_widths that include it"
            )
        return row[width]

    def fastest_ms(self) -> float:
        """The lowest latency the table predicts (every site at its fastest measured width)."""
        return self.base_ms + sum(min(row.values()) for row in self.delta_ms.values())

    def to_json(self) -> str:
        data = asdict(self)
        data["delta_ms"] = {site: {str(b): d for b, d in row.items()} for site, row in self.delta_ms.items()}
        data["base_samples_ms"] = list(self.base_samples_ms)
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        """Parse :meth:`to_json` output; raises :class:`LatencyTableError` naming what is missing or malformed."""
        try:
            data = json.loads(text)
            delta = {site: {int(b): float(d) for b, d in row.items()} for site, row in data["delta_ms"].items()}
            table = cls(
                base_ms=float(data["base_ms"]),
                delta_ms=delta,
                noise_ms=float(data["noise_ms"]),
                cpu=str(data["cpu"]),
                backend=str(data["backend"]),
                key=dict(data.get("key", {})),
                base_samples_ms=tuple(float(t) for t in data.get("base_samples_ms", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise LatencyTableError(f"not a latency table ({type(error).__name__}: {error})") from error
        if not math.isfinite(table.base_ms) or table.base_ms <= 0:
            raise LatencyTableError(f"not a latency table: base_ms must be a positive number, got {table.base_ms}")
        return table


def check_table(qmodel, table: LatencyTable) -> None:
    """Refuse a table measured for another model, site plan or CPU, or missing a candidate of the model."""
    if not isinstance(table, LatencyTable):
        raise TypeError(f"latency= needs a LatencyTable (from mixq_compile.latency_table), got {type(table).__name__}")
    sites = dict(qmodel.quantizers())
    missing, extra = sorted(set(sites) - set(table.delta_ms)), sorted(set(table.delta_ms) - set(sites))
    if missing or extra:
        raise LatencyTableError(
            f"the latency table was measured for another model: sites missing from it {missing[:5]}, sites it "
            f"has that the model lacks {extra[:5]}; measure this model with mixq_compile.latency_table(qmodel, ...)"
        )
    if table.key.get("plan") != plan_digest(qmodel.plan):
        raise LatencyTableError(
            "the latency table was measured for another site plan (same site names, but other shapes, specs or "
            "candidates); measure this model with mixq_compile.latency_table(qmodel, ...)"
        )
    here = cpu_identity()
    if table.key.get("cpu") != here:
        raise LatencyTableError(
            f"the latency table was measured on another CPU ({table.cpu}); this one is {cpu.summary()}: measure "
            "it here with mixq_compile.latency_table(qmodel, example_inputs)"
        )
    for name, q in sites.items():
        widths = q.bit_widths if isinstance(q, MixedQuantizer) else (q.bits,)
        for width in widths:
            table._delta(name, width)


def check_budget_ms(budget_ms: object, table: LatencyTable) -> float:
    """A latency budget must be a positive, finite number of milliseconds the table can reach."""
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, int | float) or not math.isfinite(budget_ms):
        raise ValueError(f"budget_ms must be a finite number of milliseconds, got {budget_ms!r}")
    if budget_ms <= 0:
        raise ValueError(f"budget_ms must be positive (milliseconds), got {budget_ms}")
    if budget_ms < table.fastest_ms():
        raise ValueError(
            f"budget_ms={budget_ms:g} is below the fastest latency the table predicts for this model "
            f"({table.fastest_ms():.4g} ms, all-highest {table.base_ms:.4g} ms on {table.cpu}); raise the budget"
        )
    return float(budget_ms)


def expected_latency_ms(qmodel, table: LatencyTable) -> Tensor:
    """Differentiable ``base + Σ_s Σ_b p_{s,b} Δ(s, b)`` (ms); a frozen site contributes its fixed width's Δ."""
    total = torch.tensor(table.base_ms)
    for name, q in qmodel.quantizers():
        if isinstance(q, MixedQuantizer):
            delta = torch.tensor([table.delta_ms[name][b] for b in q.bit_widths], dtype=q.alpha.dtype)
            total = total + (q.probabilities() * delta.to(q.alpha.device)).sum()
        else:
            total = total + table.delta_ms[name][q.bits]
    return total


def latency_penalty(qmodel, table: LatencyTable, budget_ms: float | None = None) -> Tensor:
    """Expected latency over the all-highest latency, or the hinge ``relu(E[T] / budget_ms - 1)``."""
    check_table(qmodel, table)
    expected = expected_latency_ms(qmodel, table)
    if budget_ms is not None:
        return torch.relu(expected / check_budget_ms(budget_ms, table) - 1.0)
    return expected / table.base_ms
