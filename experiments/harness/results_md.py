"""Regenerates ``experiments/RESULTS.md`` from the result files under ``results/`` (never from memory)."""

from __future__ import annotations

from pathlib import Path

from experiments import CHECKOUT, RESULTS

TARGET = CHECKOUT / "experiments" / "RESULTS.md"


def write_results_md(results: Path = RESULTS, target: Path = TARGET) -> Path:
    from experiments.harness.report_sections import render

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(results))
    return target
