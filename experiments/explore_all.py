"""Figs. 2/3: every one of the 3^9 bit assignments of the 9 sites of the Cora GCN, trained FP32 then QAT
(each 100 epochs, Adam lr 0.01, wd 2e-4, 3 runs in the paper); Pareto front of accuracy vs average bits.

``--sample N`` evaluates the three uniform assignments plus N others drawn with a fixed seed. The FP32 phase does
not depend on the assignment, so each worker trains it once per seed and reuses it (the reference retrained it
for every assignment with no seed — same distribution, far less compute); the quantized model is likewise built
once and frozen per assignment.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import random
from typing import Any

from experiments.harness import paper, plots
from experiments.harness.common import costs, quantize, seed_everything
from experiments.harness.node import node_data

NAME = "explore_all"
CANDIDATES = (2, 4, 8)
SITES = 9
METRICS = ("acc", "avg_bits", "gbitops_paper", "gbitops_wa")
TABLE_COLUMNS = ("assignment", "runs", "acc_mean", "acc_std", "avg_bits", "gbitops_paper", "wall_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample", type=int, default=None, help="random assignments besides the uniform ones")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the FP32 and of the QAT phase")


def assignments(sample: int | None, seed: int) -> list[tuple[int, ...]]:
    """All 3^9 assignments, or the uniform three plus ``sample`` distinct others (seeded)."""
    every = list(itertools.product(CANDIDATES, repeat=SITES))
    uniform = [(b,) * SITES for b in reversed(CANDIDATES)]
    if sample is None:
        return every
    others = [a for a in every if a not in uniform]
    return uniform + random.Random(seed).sample(others, min(sample, len(others)))


def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    chosen = assignments(2 if args.smoke else args.sample, args.sample_seed)
    runs = 1 if args.smoke else (args.runs or 3)
    epochs = 2 if args.smoke else args.epochs
    if args.smoke:
        chosen = chosen[:2]
    return [
        {"experiment": NAME, "dataset": "Cora", "assignment": list(a), "seed": args.seed + i, "epochs": epochs}
        for a in chosen
        for i in range(runs)
    ]


@functools.cache
def _searchable(dataset: str, seed: int, epochs: int):
    """The FP32 GCN trained once per (data set, seed, epochs) in this worker, quantized with all candidates:
    each assignment freezes a copy of it."""
    from mixq_compile.models import PlanetoidGCN
    from mixq_compile.training import train_node

    data = node_data(dataset)
    seed_everything(seed)
    model = PlanetoidGCN(data.x.shape[1], int(data.y.max()) + 1)
    model.load_state_dict(train_node(model, data, epochs=epochs, progress=False).best_state)
    return quantize(model, data.inputs, CANDIDATES)


def run(config: dict[str, Any]) -> dict[str, Any]:
    import mixq_compile as mq
    from mixq_compile.training import train_node

    data = node_data(config["dataset"])
    qmodel = _searchable(config["dataset"], config["seed"], config["epochs"])
    bits = dict(zip(qmodel.chosen_bits(), config["assignment"]))
    frozen = mq.freeze(qmodel, bits=bits)
    seed_everything(config["seed"])
    result = train_node(frozen, data, epochs=config["epochs"], lr=0.01, weight_decay=2e-4, progress=False)
    frozen.load_state_dict(result.best_state)
    return {"acc": result.test_at_best_val * 100, **costs(frozen, data.inputs), "sites": list(bits)}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, acc) points not beaten by any cheaper-or-equal point: best accuracy per cost, strictly improving."""
    best: dict[float, float] = {}
    for cost, acc in points:
        best[cost] = max(acc, best.get(cost, float("-inf")))
    front, top = [], float("-inf")
    for cost in sorted(best):
        if best[cost] > top:
            front.append((cost, best[cost]))
            top = best[cost]
    return front


def summarize(records: list[dict]) -> list[dict]:
    from experiments.harness.stats import summarize as group_summary

    for record in records:
        record["config"] = {**record["config"], "assignment_str": ",".join(map(str, record["config"]["assignment"]))}
    rows = group_summary(records, ("assignment_str",), METRICS, with_std=("acc",))
    front = set(pareto_front([(round(r["avg_bits_mean"], 3), r["acc_mean"]) for r in rows]))
    for row in rows:
        row["assignment"] = row.pop("assignment_str")
        for metric in METRICS[1:]:
            row[metric] = row.pop(f"{metric}_mean")
        row["pareto"] = (round(row["avg_bits"], 3), row["acc_mean"]) in front
    rows.sort(key=lambda r: -r["acc_mean"])
    return rows


def plot(rows: list[dict], records: list[dict], out_dir) -> None:
    points = [(r["avg_bits"], r["acc_mean"]) for r in rows]
    plots.scatter_front(
        points,
        pareto_front(points),
        list(paper.EXPLORE_PARETO.items()),
        out_dir / "pareto_avg_bits.png",
        title="explore-all (Cora GCN)",
        xlabel="average bits",
    )
    plots.scatter_front(
        [(r["gbitops_paper"], r["acc_mean"]) for r in rows],
        pareto_front([(r["gbitops_paper"], r["acc_mean"]) for r in rows]),
        [(v[2], v[0]) for v in paper.EXPLORE_UNIFORM.values()],
        out_dir / "pareto_gbitops.png",
        title="explore-all (Cora GCN); paper: uniform 2/4/8-bit points",
        xlabel="GBitOPs (paper convention)",
    )


if __name__ == "__main__":
    from experiments.harness.runner import script_main

    script_main(NAME)
