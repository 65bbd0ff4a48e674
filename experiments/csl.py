"""Table 8 (CSL): GCN with residuals on 50-dim Laplacian PE, 5 given splits; FP32, every site at 1/2/4 bits, and
MixQ {1,2,4} at λ ∈ {−1e−3, 0, 1e−3} (search → FP32 → QAT); batch 8, Adam lr 5e-4, ReduceLROnPlateau
(MIXQ_METHOD.md §5.5). Our 1 bit is binary (the reference's is ternary) and every site is quantized.
"""

from __future__ import annotations

import argparse
from typing import Any

from experiments.harness import paper, plots
from experiments.harness.common import bits_summary, costs, load, seed_everything
from experiments.harness.graph import example_inputs, fit, loaders, qat, search_bits, uniform_bits

NAME = "csl"
CANDIDATES = (1, 2, 4)
METRICS = ("acc", "fp32_acc", "avg_bits", "gbitops_paper", "gbitops_wa")
TABLE_COLUMNS = ("setting", "lambda", "runs", "acc_mean", "acc_std", "avg_bits", "gbitops_paper", "gbitops_wa",
                 "epochs", "wall_s")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", nargs="+", default=["fp32", "fixed_1", "fixed_2", "fixed_4", "mixq"])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[-1e-3, 0.0, 1e-3])
    parser.add_argument("--splits", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--epochs", type=int, default=500, help="epochs of each phase")


def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = 1 if args.smoke else (args.runs or 10)
    splits = args.splits[:1] if args.smoke else args.splits
    epochs = 2 if args.smoke else args.epochs
    variants = [(s, None) for s in args.settings if s != "mixq"]
    variants += [("mixq", lam) for lam in args.lambdas] if "mixq" in args.settings else []
    if args.smoke:
        variants = variants[-1:]
    return [
        {
            "experiment": NAME,
            "setting": setting,
            "lambda": lam,
            "split": split,
            "seed": args.seed + 100 * split + i,
            "batch_size": 8,
            "lr": 5e-4,
            "epochs": epochs,
        }
        for setting, lam in variants
        for split in splits
        for i in range(runs)
    ]


def prepare(configs: list[dict]) -> None:
    load("CSL")


def run(config: dict[str, Any]) -> dict[str, Any]:
    from mixq_compile.models import CSLGCN

    seed_everything(config["seed"])
    loaded = load("CSL")
    split = loaded.splits[config["split"]]
    data = loaders(loaded.dataset, (split["train"], split["val"], split["test"]), config["batch_size"], config["seed"])

    def make():
        return CSLGCN(loaded.num_features, loaded.num_classes)

    train = {"epochs": config["epochs"], "lr": config["lr"], "schedule": "plateau"}
    setting = config["setting"]
    bits = None
    if setting == "mixq":
        bits = search_bits(make, data, CANDIDATES, config["lambda"], train)
    elif setting.startswith("fixed_"):
        bits = uniform_bits(make, data, CANDIDATES, int(setting.split("_")[1]))
    fp_model = make()
    fp = fit(fp_model, data, train, desc="FP32")
    result = {"fp32_acc": fp.test_at_best_val * 100}
    if bits is None:
        return {**result, "acc": result["fp32_acc"], **costs(fp_model, example_inputs(data[0]))}
    frozen, q = qat(fp_model, data, CANDIDATES, bits, train)
    cost = costs(frozen, example_inputs(data[0]))
    return {**result, "acc": q.test_at_best_val * 100, **cost, "bits": bits_summary(bits)}


def _paper_key(row: dict) -> str:
    return f"mixq_{row['lambda']}" if row["setting"] == "mixq" else row["setting"]


def summarize(records: list[dict]) -> list[dict]:
    from experiments.harness.stats import summarize as group_summary

    rows = group_summary(records, ("setting", "lambda", "epochs"), METRICS, with_std=("acc", "fp32_acc"))
    for row in rows:
        for metric in METRICS[2:]:
            row[metric] = row.pop(f"{metric}_mean")
        found = paper.CSL.get(_paper_key(row))
        row["paper_acc"], row["paper_avg_bits"] = (found[0], found[2]) if found else (None, None)
    return rows


def plot(rows: list[dict], records: list[dict], out_dir) -> None:
    ours = [(_paper_key(r), r["avg_bits"], r["acc_mean"], r["acc_std"]) for r in rows if r["setting"] != "fp32"]
    published = [(k, v[2], v[0]) for k, v in paper.CSL.items() if k != "fp32"]
    fp32 = next((r["acc_mean"] for r in rows if r["setting"] == "fp32"), None)
    plots.acc_vs_cost(ours, published, out_dir / "acc_vs_bits.png", title="CSL", xlabel="average bits", fp32=fp32)


if __name__ == "__main__":
    from experiments.harness.runner import script_main

    script_main(NAME)
