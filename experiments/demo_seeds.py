"""The demo's accuracy gap to FP32 over seeds and thread counts (issue 16: "a search that holds up").

Repeats the training path of ``mixq-compile demo`` (:func:`mixq_compile.demo.train_demo`: FP32 training, MixQ
search, the guard, freeze, QAT; Cora with the paper's GCN, hidden 128, candidates {2, 4, 8}, the demo's λ) for
``--seeds`` seeds at each of ``--threads`` torch thread counts, and records per run: FP32 and QAT accuracy on
validation and test, the gap, the mean bits and what the guard did. Runs already in ``runs.csv`` are skipped, so
a stopped sweep resumes. Writes ``runs.csv``, ``summary.json`` (mean / worst gap per thread count, the CPU) and
``gaps.png`` to ``results/demo_seeds/``.

    MIXQ_DATA=../shared/datasets python -m experiments.demo_seeds [--seeds 10] [--threads 1 2] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from pathlib import Path

import mixq_compile as mq
from experiments import RESULTS
from experiments.harness.common import torch_threads
from mixq_compile import cpu
from mixq_compile.demo import train_demo
from mixq_compile.workflow import ACCURACY_GAP_WARNING

NAME = "demo_seeds"
COLUMNS = ("threads", "seed", "fp32_val", "fp32_test", "qat_val", "qat_test", "gap", "avg_bits", "raised", "cpu")
TARGET_WORST_GAP = 2.0


def run_one(root: str, threads: int, seed: int, epochs: int, lam: float) -> dict:
    with torch_threads(threads):
        trained = train_demo(root, epochs=epochs, hidden=128, bits=(2, 4, 8), lam=lam, seed=seed)
    task = trained.task
    fp32_test, qat_test = task.accuracy(trained.fp32) * 100, task.accuracy(trained.frozen) * 100
    return {
        "threads": threads,
        "seed": seed,
        "fp32_val": round(task.validation(trained.fp32) * 100, 2),
        "fp32_test": round(fp32_test, 2),
        "qat_val": round(task.validation(trained.frozen) * 100, 2),
        "qat_test": round(qat_test, 2),
        "gap": round(fp32_test - qat_test, 2),
        "avg_bits": round(mq.bitops(trained.frozen, task.inputs).avg_bits, 2),
        "raised": sum(line.startswith("raised") for line in trained.guard_log),
        "cpu": cpu.model(),
    }


def summarize(rows: list[dict]) -> dict:
    out: dict = {"cpu": cpu.describe(), "target_worst_gap": TARGET_WORST_GAP, "by_threads": {}}
    for threads in sorted({r["threads"] for r in rows}):
        gaps = [r["gap"] for r in rows if r["threads"] == threads]
        bits = [r["avg_bits"] for r in rows if r["threads"] == threads]
        out["by_threads"][str(threads)] = {
            "runs": len(gaps),
            "mean_gap": round(statistics.fmean(gaps), 2),
            "worst_gap": max(gaps),
            "over_warning": sum(g > ACCURACY_GAP_WARNING for g in gaps),
            "mean_bits": round(statistics.fmean(bits), 2),
            "min_bits": min(bits),
            "max_bits": max(bits),
        }
    return out


def plot(rows: list[dict], path: Path) -> None:
    from mixq_compile.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for threads in sorted({r["threads"] for r in rows}):
        mine = [r for r in rows if r["threads"] == threads]
        ax.scatter([r["seed"] for r in mine], [r["gap"] for r in mine], label=f"{threads} thread(s)")
    ax.axhline(TARGET_WORST_GAP, color="grey", linestyle="--", label="target worst gap")
    ax.set_xlabel("seed")
    ax.set_ylabel("FP32 - QAT test accuracy (points)")
    ax.set_title(f"mixq-compile demo on Cora, {cpu.model()}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=50, help="epochs per phase (the demo's default)")
    parser.add_argument("--lam", type=float, default=0.1, help="the demo's default λ")
    parser.add_argument("--data-root", default=None, help="data root (default: $MIXQ_DATA)")
    parser.add_argument("--out", type=Path, default=RESULTS / NAME)
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 1 thread, 3 epochs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.threads, args.epochs = 2, [1], 3
    root = args.data_root or os.environ.get("MIXQ_DATA")
    if not root:
        parser.error("the demo runs on Cora: set MIXQ_DATA or pass --data-root (a folder with PyG's raw Cora files)")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs.csv"
    rows = list(csv.DictReader(runs.open())) if runs.is_file() else []
    rows = [{k: (r[k] if k == "cpu" else float(r[k])) for k in COLUMNS} for r in rows]
    done = {(int(r["threads"]), int(r["seed"])) for r in rows}
    for threads in args.threads:
        for seed in range(args.seeds):
            if (threads, seed) in done:
                continue
            rows.append(run_one(root, threads, seed, args.epochs, args.lam))
            with runs.open("w", newline="") as f:  # rewritten after each run: a stopped sweep loses nothing
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    summary = summarize(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, args.out / "gaps.png")
    print(f"\n{'threads':>8}{'runs':>6}{'mean gap':>10}{'worst gap':>11}{'mean bits':>11}")
    for threads, s in summary["by_threads"].items():
        print(f"{threads:>8}{s['runs']:>6}{s['mean_gap']:>10.2f}{s['worst_gap']:>11.2f}{s['mean_bits']:>11.2f}")
    print(f"CPU: {cpu.summary()}")


if __name__ == "__main__":
    main()
