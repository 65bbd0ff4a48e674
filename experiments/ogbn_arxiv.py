"""Table 1 (ogbn-arxiv): 3-layer GCN, hidden 256, candidates {4,8} (MIXQ_METHOD.md §5.2).

Needs the ``ogb`` package and the ogbn-arxiv files; without them it exits with a message saying what is missing.
The run itself follows the Table-1 node protocol with the ArxivGCN (search → FP32 → QAT, best-val checkpoints).
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from experiments.harness import plots
from experiments.harness.common import bits_summary, costs, load, quantize, seed_everything

NAME = "ogbn_arxiv"
METRICS = ("acc", "fp32_acc", "avg_bits", "gbitops_paper", "gbitops_wa")
PAPER = {-1e-8: (70.61, 167.501), 0.1: (69.97, 167.501), 1.0: (69.29, 167.501)}  # §6.2: acc, GBitOPs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lambdas", type=float, nargs="+", default=[-1e-8, 0.1, 1.0])
    parser.add_argument("--epochs", type=int, default=500)


def unavailable(args: argparse.Namespace) -> str | None:
    if importlib.util.find_spec("ogb") is None:
        return "the `ogb` package is not installed (pip install ogb) and ogbn-arxiv is not in the data root"
    from mixq_compile.data import DatasetNotFoundError

    try:
        load("ogbn-arxiv")
    except (DatasetNotFoundError, OSError, RuntimeError) as error:
        return f"ogbn-arxiv data is not available: {error}"
    return None


def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = 1 if args.smoke else (args.runs or 10)
    epochs = 2 if args.smoke else args.epochs
    lambdas = args.lambdas[:1] if args.smoke else args.lambdas
    return [
        {"experiment": NAME, "dataset": "ogbn-arxiv", "lambda": lam, "seed": args.seed + i, "epochs": epochs}
        for lam in lambdas
        for i in range(runs)
    ]


def run(config: dict[str, Any]) -> dict[str, Any]:
    import mixq_compile as mq
    from mixq_compile.models import ArxivGCN
    from mixq_compile.training import NodeData, train_node

    seed_everything(config["seed"])
    loaded = load("ogbn-arxiv")
    graph = loaded.dataset[0]
    split = loaded.dataset.get_idx_split()
    masks = []
    for part in ("train", "valid", "test"):
        mask = graph.y.new_zeros(graph.num_nodes, dtype=bool)
        mask[split[part]] = True
        masks.append(mask)
    data = NodeData(graph.x, graph.edge_index, graph.y.view(-1), *masks)
    classes = loaded.num_classes
    search_model = quantize(ArxivGCN(graph.x.shape[1], classes), data.inputs, (4, 8))
    train_node(search_model, data, epochs=config["epochs"], lam=config["lambda"], penalty_scaling="paper")
    bits = search_model.chosen_bits()
    fp_model = ArxivGCN(graph.x.shape[1], classes)
    fp = train_node(fp_model, data, epochs=config["epochs"])
    fp_model.load_state_dict(fp.best_state)
    frozen = mq.freeze(quantize(fp_model, data.inputs, (4, 8)), bits=bits)
    q = train_node(frozen, data, epochs=config["epochs"], lr=1e-4)
    frozen.load_state_dict(q.best_state)
    return {
        "acc": q.test_at_best_val * 100,
        "fp32_acc": fp.test_at_best_val * 100,
        **costs(frozen, data.inputs),
        "bits": bits_summary(bits),
    }


def summarize(records: list[dict]) -> list[dict]:
    from experiments.harness.stats import summarize as group_summary

    return group_summary(records, ("dataset", "lambda"), METRICS, with_std=("acc",))


def plot(rows: list[dict], records: list[dict], out_dir) -> None:
    ours = [(f"λ={r['lambda']:g}", r["gbitops_paper_mean"], r["acc_mean"], r["acc_std"]) for r in rows]
    published = [(f"λ={lam:g}", v[1], v[0]) for lam, v in PAPER.items()]
    plots.acc_vs_cost(ours, published, out_dir / "acc_vs_gbitops.png", title="ogbn-arxiv GCN")


if __name__ == "__main__":
    from experiments.harness.runner import script_main

    script_main(NAME)
