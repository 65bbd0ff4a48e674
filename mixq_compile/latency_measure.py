"""Measure a :class:`~mixq_compile.cost.latency.LatencyTable`: what each site's bit-width costs in *measured* time.

Through the public path only: ``freeze(qmodel, bits)`` → ``export(frozen, inputs, path, backend)`` →
``load_artifact(path)`` (the defaults: self-checked, structure cached per graph) → :func:`~mixq_compile.profile`.
Artifacts: the base (every site at its highest candidate) and, for each site ``s`` and lower candidate ``b``, the
base with only ``s`` at ``b``. Sites are measured one at a time, also where two share one op (a weight and its
linear's input): the table is additive by construction (see :mod:`mixq_compile.cost.latency`).

Noise control (:func:`time_interleaved`): every round times ``base, v1, base, v2, …, vn, base`` (the variants in a
new random order each round), and a variant's Δ for that round is its time minus the mean of the two base timings
around it, so drift (thermal, another process starting) cancels instead of leaking into Δ. Δ is the median over
rounds; ``base_ms`` the median of all base timings, and ``noise_ms`` their robust spread.

The table is cached as JSON (``cache=path``), keyed by everything the numbers depend on
(:func:`~mixq_compile.cost.latency.measurement_key`); a cache that does not match, or cannot be read, is named in
a warning and measured again, never used.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import cpu
from .api import freeze
from .artifact import export, load_artifact
from .atomic import write_file
from .cost.latency import LatencyTable, LatencyTableError, measurement_key
from .profiling import profile
from .quant.mixed import MixedQuantizer
from .quantized_model import QuantizedModel

#: 1.4826 × MAD estimates the standard deviation of normal data, and ignores the odd outlier that std would not
MAD_TO_STD = 1.4826


def robust_spread(values: Sequence[float]) -> float:
    """1.4826 × the median absolute deviation: a standard deviation that one stalled call does not inflate."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return MAD_TO_STD * statistics.median(abs(v - middle) for v in values)


@dataclass(frozen=True)
class PairedTimings:
    """Median latencies (ms) from :func:`time_interleaved`.

    ``reference_ms``: every reference timing, in order. ``own_ms[i]``: other ``i``'s timing in each round.
    ``delta_ms[i]``: per round, other ``i``'s timing minus the mean of the two reference timings around it.
    """

    reference_ms: tuple[float, ...]
    own_ms: tuple[tuple[float, ...], ...]
    delta_ms: tuple[tuple[float, ...], ...]

    def median_delta(self, index: int) -> float:
        return statistics.median(self.delta_ms[index])


def time_interleaved(
    reference: Callable[..., object],
    others: Sequence[Callable[..., object]],
    inputs: Sequence[Tensor],
    *,
    rounds: int = 3,
    warmup: int = 2,
    repeats: int = 10,
    seed: int = 0,
    progress: bool = True,
    desc: str = "latency",
) -> PairedTimings:
    """Time ``others`` against ``reference``, each between two reference timings (see the module docstring).

    Each timing is one :func:`~mixq_compile.profile` call (``warmup`` untimed calls, the median of ``repeats``);
    every model is called once before the first round, so one-time work (the structure cache) is never timed.
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    args = tuple(inputs)
    rng = random.Random(seed)
    reference_ms: list[float] = []
    own: list[list[float]] = [[] for _ in others]
    delta: list[list[float]] = [[] for _ in others]

    def timed(model: Callable[..., object]) -> float:
        result = profile(model, args, warmup=warmup, repeats=repeats).median_ms
        bar.update()
        return result

    with torch.no_grad():  # first calls (structure caches, lazy initialisation) belong to no timing
        for model in (reference, *others):
            model(*args)
    with tqdm(total=rounds * (2 * len(others) + 1), desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(rounds):
            order = list(range(len(others)))
            rng.shuffle(order)
            before = timed(reference)
            reference_ms.append(before)
            for index in order:
                measured = timed(others[index])
                after = timed(reference)
                reference_ms.append(after)
                own[index].append(measured)
                delta[index].append(measured - (before + after) / 2)
                before = after
    return PairedTimings(tuple(reference_ms), tuple(map(tuple, own)), tuple(map(tuple, delta)))


def _site_widths(qmodel: QuantizedModel, bit_widths: Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    """Each site's widths to measure: its candidates (those in ``bit_widths``, if given), always its highest."""
    candidates = {
        name: tuple(q.bit_widths) if isinstance(q, MixedQuantizer) else (q.bits,) for name, q in qmodel.quantizers()
    }
    if bit_widths is None:
        return candidates
    wanted = {int(b) for b in bit_widths}
    known = {b for widths in candidates.values() for b in widths}
    if not wanted or wanted - known:
        raise ValueError(
            f"bit_widths={sorted(wanted)} must name candidate widths of the model; its candidates are {sorted(known)}"
        )
    return {name: tuple(b for b in widths if b in wanted or b == max(widths)) for name, widths in candidates.items()}


def _read_cache(path: Path, key: dict) -> LatencyTable | None:
    """The cached table if it was measured for exactly ``key``; otherwise a warning naming why, and ``None``."""
    if not path.exists():
        return None
    try:
        table = LatencyTable.from_json(path.read_text())
    except (OSError, UnicodeDecodeError, LatencyTableError) as error:
        warnings.warn(f"latency cache {path} cannot be read ({error}); measuring again and replacing it", stacklevel=3)
        return None
    if table.key != key:
        changed = sorted(k for k in key.keys() | table.key.keys() if key.get(k) != table.key.get(k))
        warnings.warn(
            f"latency cache {path} was measured for another {', '.join(changed)} (cached on {table.cpu}, backend "
            f"{table.backend!r}); measuring again and replacing it",
            stacklevel=3,
        )
        return None
    return table


def latency_table(
    qmodel: QuantizedModel,
    example_inputs: Sequence[Tensor],
    backend: str = "torch",
    *,
    bit_widths: Sequence[int] | None = None,
    rounds: int = 3,
    warmup: int = 2,
    repeats: int = 10,
    cache: str | Path | None = None,
    progress: bool = True,
) -> LatencyTable:
    """Measure what every site's candidate bit-widths cost in latency on this CPU and ``backend``.

    Args:
        qmodel: the mixed model from :func:`~mixq_compile.quantize` (its weights do not matter, its plan does).
        example_inputs: the inputs to time on (the deployment graph: latency depends on its size).
        backend: the artifact backend, as in :func:`~mixq_compile.export`.
        bit_widths: measure only these candidate widths (default: every candidate of every site); the penalty
            needs every candidate, so a partial table serves :meth:`LatencyTable.predict` only.
        rounds / warmup / repeats: interleaved rounds; untimed and timed calls of each timing.
        cache: a JSON file: reused when it matches this measurement exactly, else measured again and replaced.

    Costs one export per (site, lower width) plus the base, and ``rounds × (2 × variants + 1)`` timings.
    """
    if not isinstance(qmodel, QuantizedModel) or not qmodel.is_mixed:
        raise TypeError(
            "latency_table() measures the candidates of the mixed model returned by mixq_compile.quantize(), "
            f"got {'a frozen QuantizedModel' if isinstance(qmodel, QuantizedModel) else type(qmodel).__name__}"
        )
    args = tuple(example_inputs)
    qmodel.check_inputs(args)
    widths = _site_widths(qmodel, bit_widths)
    settings = {"rounds": rounds, "warmup": warmup, "repeats": repeats, "bit_widths": sorted(bit_widths or [])}
    shapes = [[list(t.shape), str(t.dtype)] for t in args]
    key = measurement_key(qmodel.plan, shapes, backend, settings)
    path = Path(cache) if cache is not None else None
    if path is not None and (cached := _read_cache(path, key)) is not None:
        return cached
    base = {name: max(w) for name, w in widths.items()}
    variants = [(name, b) for name, w in widths.items() for b in sorted(w) if b != base[name]]
    with tempfile.TemporaryDirectory(prefix="mixq_latency_") as folder:
        artifacts = []
        for index, bits in enumerate(tqdm([base, *(base | {s: b} for s, b in variants)], desc="export",
                                          disable=not progress, leave=False)):  # fmt: skip
            frozen = freeze(qmodel, bits)
            artifacts.append(load_artifact(export(frozen, args, Path(folder) / f"v{index}", backend=backend)))
        timings = time_interleaved(
            artifacts[0], artifacts[1:], args, rounds=rounds, warmup=warmup, repeats=repeats, progress=progress
        )
    delta: dict[str, dict[int, float]] = {name: {base[name]: 0.0} for name in widths}
    for index, (name, b) in enumerate(variants):
        delta[name][b] = timings.median_delta(index)
    table = LatencyTable(
        base_ms=statistics.median(timings.reference_ms),
        delta_ms={name: dict(sorted(row.items())) for name, row in delta.items()},
        noise_ms=robust_spread(timings.reference_ms),
        cpu=cpu.summary(),
        backend=backend,
        key=key,
        base_samples_ms=timings.reference_ms,
    )
    if path is not None:
        write_file(path, table.to_json())
    return table
