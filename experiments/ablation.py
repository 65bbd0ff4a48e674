"""Fig. 6: the λ ablation on Cora — the Table-1 protocol (paper penalty scaling) at 40 values of λ:
linspace(−0.01, −0.1, 19) ∪ linspace(0, 0.1, 21) (MIXQ_METHOD.md §5.1). ``--every`` / ``--lambdas`` pick a subset.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from experiments.harness import paper, plots
from experiments.harness.node import planetoid_run
from experiments.planetoid import node_config

NAME = "ablation"
METRICS = ("acc", "fp32_acc", "avg_bits", "gbitops_paper", "gbitops_wa")
TABLE_COLUMNS = ("dataset", "lambda", "runs", "acc_mean", "acc_std", "avg_bits", "gbitops_paper", "paper_acc",
                 "paper_avg_bits", "wall_s")  # fmt: skip

run = planetoid_run


def paper_grid() -> list[float]:
    """The 40 λ of the reference's ablation script, rounded to remove linspace noise."""
    grid = np.concatenate([np.linspace(-0.01, -0.1, 19), np.linspace(0, 0.1, 21)])
    return [round(float(v), 6) for v in grid]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="Cora")
    parser.add_argument("--lambdas", type=float, nargs="+", default=None, help="explicit λ list (default: the 40)")
    parser.add_argument("--every", type=int, default=1, help="take every n-th λ of the 40")
    parser.add_argument("--epochs", type=int, default=50)


def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    lambdas = args.lambdas or paper_grid()[:: args.every]
    runs = 1 if args.smoke else (args.runs or 10)
    epochs = 3 if args.smoke else args.epochs
    if args.smoke:
        lambdas = lambdas[:1]
    return [
        node_config(NAME, args.dataset, "mixq", lam, "paper", args.seed + i, epochs)
        for lam in lambdas
        for i in range(runs)
    ]


def summarize(records: list[dict]) -> list[dict]:
    from experiments.harness.stats import summarize as group_summary

    rows = group_summary(records, ("dataset", "lambda"), METRICS, with_std=("acc", "avg_bits"))
    for row in rows:
        for metric in METRICS[2:]:
            row[metric] = row.pop(f"{metric}_mean")
        found = paper.ABLATION_CORA.get(row["lambda"]) if row["dataset"] == "Cora" else None
        row["paper_acc"], row["paper_avg_bits"], row["paper_gbitops"] = (
            (found[0], found[2], found[3]) if found else (None, None, None)
        )
    rows.sort(key=lambda r: (r["dataset"], r["lambda"]))
    return rows


def plot(rows: list[dict], records: list[dict], out_dir) -> None:
    series = {
        "ours": [(r["lambda"], r["acc_mean"], r["acc_std"], r["avg_bits"]) for r in rows],
        "paper (Cora)": [(lam, v[0], v[1], v[2]) for lam, v in paper.ABLATION_CORA.items()],
    }
    plots.lambda_curves(series, out_dir / "lambda_curves.png", title="λ ablation (Cora GCN, paper scaling)")


if __name__ == "__main__":
    from experiments.harness.runner import script_main

    script_main(NAME)
