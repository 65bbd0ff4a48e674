"""Quantization-error report: which site costs how much, at which bit-width (as AIMET's quant analyzer does).

:func:`sensitivity` runs the model over calibration batches with every quantizer bypassed (the FP32 reference),
then with exactly one site quantized at each of its candidate widths, and then with the sites switched on one by
one in graph order at their chosen widths (the cumulative error). Errors are the relative L2 distance of the
outputs from the FP32 reference over all batches, and the SQNR in dB. The report prints as a table, writes CSV and a
PNG, and suggests bits: the narrowest candidate of each site whose error alone stays under a tolerance, a
``bits`` mapping for :func:`mixq_compile.freeze` (or sites to keep in higher precision while searching).

Bias quantization (applied when freezing) is not part of the report: biases stay FP32 here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from .calibration import batch_arguments
from .graph_copy import quiet_deepcopy
from .ir.meta import QUANTIZER_ROOT
from .quant.mixed import MixedQuantizer
from .quantized_model import QuantizedModel


@dataclass(frozen=True)
class SiteError:
    site: str
    kind: str
    bits: int
    relative_error: float
    sqnr_db: float


@dataclass(frozen=True)
class SensitivityReport:
    """Per-site errors (``sites``: one row per site and candidate width) and the cumulative curve (``cumulative``:
    the error with the first k sites quantized at ``chosen`` bits)."""

    sites: tuple[SiteError, ...]
    cumulative: tuple[SiteError, ...]
    chosen: Mapping[str, int]

    def error(self, site: str, bits: int) -> float:
        return next(r.relative_error for r in self.sites if r.site == site and r.bits == bits)

    def suggest_bits(self, tolerance: float = 0.01) -> dict[str, int]:
        """Each site's narrowest candidate whose error alone is at most ``tolerance`` (else its widest)."""
        suggestion: dict[str, int] = {}
        for row in sorted(self.sites, key=lambda r: r.bits):
            if row.site not in suggestion and row.relative_error <= tolerance:
                suggestion[row.site] = row.bits
        widest = {r.site: max(x.bits for x in self.sites if x.site == r.site) for r in self.sites}
        return {site: suggestion.get(site, widest[site]) for site in widest}

    def __str__(self) -> str:
        widths = sorted({r.bits for r in self.sites})
        names = list(dict.fromkeys(r.site for r in self.sites))
        width = max(len(n) for n in names) + 2
        header = f"{'site':<{width}}{'kind':<12}" + "".join(f"{f'{b}-bit err':>12}" for b in widths)
        header += f"{'cumulative':>12}"
        lines = [header, "-" * len(header)]
        cumulative = {r.site: r.relative_error for r in self.cumulative}
        for name in names:
            row = [r for r in self.sites if r.site == name]
            cells = {r.bits: f"{r.relative_error:.4f}" for r in row}
            line = f"{name:<{width}}{row[0].kind:<12}" + "".join(f"{cells.get(b, '-'):>12}" for b in widths)
            lines.append(line + f"{cumulative.get(name, float('nan')):>12.4f}")
        lines.append("errors: relative L2 of the outputs vs FP32 with only that site quantized; "
                     "cumulative: sites up to this one quantized at their chosen bits")  # fmt: skip
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["measure", "site", "kind", "bits", "relative_error", "sqnr_db"])
            for measure, rows in (("alone", self.sites), ("cumulative", self.cumulative)):
                for r in rows:
                    writer.writerow([measure, r.site, r.kind, r.bits, r.relative_error, r.sqnr_db])
        return path

    def plot(self, path: str | Path, title: str = "quantization error per site") -> Path:
        from .plotting import pyplot

        plt = pyplot()
        names = list(dict.fromkeys(r.site for r in self.sites))
        widths = sorted({r.bits for r in self.sites})
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 4.2))
        bar = 0.8 / len(widths)
        for i, b in enumerate(widths):
            values = [next((r.relative_error for r in self.sites if r.site == n and r.bits == b), 0.0) for n in names]
            ax.bar([k + i * bar for k in range(len(names))], values, bar, label=f"{b} bits, site alone")
        ax.plot(range(len(names)), [r.relative_error for r in self.cumulative], "k.-", label="cumulative (chosen)")
        ax.set_xticks([k + 0.4 for k in range(len(names))], names, rotation=70, ha="right", fontsize=7)
        ax.set(ylabel="relative L2 error of the output", title=title, yscale="log")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def _flat(output: object) -> Tensor:
    return torch.cat([leaf.detach().float().flatten() for leaf in pytree.tree_leaves(output)])


def sensitivity(qmodel: QuantizedModel, batches: Iterable[Any], *, progress: bool = True) -> SensitivityReport:
    """The per-site and cumulative quantization error of ``qmodel`` (mixed or frozen) over ``batches`` (the forms
    :func:`mixq_compile.calibrate` takes). ``qmodel`` is not changed; its ranges should be calibrated first."""
    inputs = [batch_arguments(b, qmodel.input_specs, i) for i, b in enumerate(batches)]
    if not inputs:
        raise ValueError("sensitivity() got no batches: pass a non-empty iterable of inputs")
    probe = quiet_deepcopy(qmodel).eval()
    modules = getattr(probe.graph_module, QUANTIZER_ROOT)
    plan = {s.name: s for s in probe.plan.sites}
    originals = {name: modules[site.module_key] for name, site in plan.items()}
    chosen = qmodel.chosen_bits()

    def candidates(name: str) -> dict[int, nn.Module]:
        quantizer = originals[name]
        if isinstance(quantizer, MixedQuantizer):
            return {b: quantizer.candidate(b) for b in quantizer.bit_widths}
        return {quantizer.bits: quantizer}

    def run(active: Mapping[str, nn.Module]) -> list[Tensor]:
        for name, site in plan.items():
            modules[site.module_key] = active.get(name, nn.Identity())
        with torch.no_grad():
            return [_flat(probe(*args)) for args in inputs]

    reference = run({})
    norm = math.sqrt(sum(float((y**2).sum()) for y in reference))

    def measure(name: str, bits: int, active: Mapping[str, nn.Module]) -> SiteError:
        noise = math.sqrt(sum(float(((y - r) ** 2).sum()) for y, r in zip(run(active), reference)))
        relative = noise / norm if norm > 0 else float("inf")
        sqnr = 20 * math.log10(norm / noise) if noise > 0 and norm > 0 else float("inf")
        return SiteError(name, plan[name].kind, bits, relative, sqnr)

    names = list(plan)
    work = [(n, b, q) for n in names for b, q in candidates(n).items()]
    rows = [measure(n, b, {n: q}) for n, b, q in tqdm(work, desc="sensitivity", disable=not progress, leave=False)]
    active: dict[str, nn.Module] = {}
    cumulative = []
    for name in names:
        active[name] = candidates(name)[chosen[name]]
        cumulative.append(measure(name, chosen[name], active))
    return SensitivityReport(tuple(rows), tuple(cumulative), chosen)
