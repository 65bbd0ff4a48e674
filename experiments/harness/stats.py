"""Summaries of run records: group by config fields, mean and population std (ddof=0, as the paper reports)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    return float(data.mean()), float(data.std())


def group(records: Sequence[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    """Records grouped by the given config fields, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(record["config"].get(k) for k in keys), []).append(record)
    return groups


def summarize(
    records: Sequence[dict],
    keys: Sequence[str],
    metrics: Sequence[str],
    *,
    with_std: Sequence[str] = (),
    with_max: Sequence[str] = (),
) -> list[Row]:
    """One row per group: the key fields, ``runs``, ``<metric>_mean`` (plus ``_std`` for ``with_std`` and ``_max``
    for ``with_max``), the
    summed ``wall_s`` of the runs and their summed process CPU time ``cpu_s`` (where recorded; on a shared machine
    it is the better measure of cost)."""
    rows = []
    for values, members in group(records, keys).items():
        row: Row = dict(zip(keys, values))
        row["runs"] = len(members)
        for metric in metrics:
            values = [m["result"].get(metric) for m in members]
            mean, std = mean_std(values)
            row[f"{metric}_mean"] = mean
            if metric in with_std:
                row[f"{metric}_std"] = std
            if metric in with_max:
                row[f"{metric}_max"] = max((v for v in values if v is not None), default=None)
        row["wall_s"] = sum(m["wall_s"] for m in members)
        cpu = [m["cpu_s"] for m in members if m.get("cpu_s") is not None]
        row["cpu_s"] = sum(cpu) if cpu else None
        rows.append(row)
    return rows


def write_table(rows: Sequence[Row], out_dir: Path, name: str = "summary") -> None:
    """``<name>.csv`` and ``<name>.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out_dir / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / f"{name}.json").write_text(json.dumps(list(rows), indent=1, default=float))


def format_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table for the terminal."""
    if not rows:
        return "(no finished runs)"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
        return str(v)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
