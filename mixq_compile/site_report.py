"""The site report: one row per quantization point, printable as a table."""

from __future__ import annotations

from dataclasses import dataclass

from .quant.mixed import MixedQuantizer


@dataclass(frozen=True)
class SiteRow:
    name: str
    kind: str
    shape: tuple[int | str, ...]
    candidates: tuple[int, ...]
    probabilities: tuple[float, ...] | None
    bits: int
    signed: bool
    granularity: str


@dataclass(frozen=True)
class SiteTable:
    rows: tuple[SiteRow, ...]
    float_ops: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def by_kind(self, kind: str) -> list[SiteRow]:
        return [r for r in self.rows if r.kind == kind]

    def __str__(self) -> str:
        header = f"{'site':<34}{'kind':<12}{'shape':<18}{'candidates':<12}{'probabilities':<22}{'bits':>4}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            shape = "x".join(str(s) for s in r.shape)
            cands = ",".join(map(str, r.candidates))
            probs = " ".join(f"{p:.2f}" for p in r.probabilities) if r.probabilities else "fixed"
            lines.append(f"{r.name:<34}{r.kind:<12}{shape:<18}{cands:<12}{probs:<22}{r.bits:>4}")
        average = sum(r.bits for r in self.rows) / max(len(self.rows), 1)
        lines.append(f"{len(self.rows)} sites; average bits {average:.2f}")
        if self.float_ops:
            lines.append(f"left in float ({len(self.float_ops)}): {', '.join(self.float_ops)}")
        return "\n".join(lines)


def site_table(qmodel) -> SiteTable:
    rows = []
    bits = qmodel.chosen_bits()
    example = qmodel.example_shapes.outputs
    for site in qmodel.plan.sites:
        q = qmodel.quantizer(site.name)
        probs = tuple(q.probabilities().tolist()) if isinstance(q, MixedQuantizer) else None
        rows.append(
            SiteRow(
                site.name,
                site.kind,
                example.get(site.node) or site.shape,  # the example's sizes read better than symbols
                site.candidates,
                probs,
                bits[site.name],
                site.spec.signed,
                site.spec.granularity,
            )
        )
    return SiteTable(tuple(rows), qmodel.plan.float_ops)
