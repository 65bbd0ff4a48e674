"""Latency-aware search vs the BitOPs search: test accuracy against the *measured* latency of the exported artifact.

Per data set (Cora, and a planted-community graph of ``--nodes`` nodes from :mod:`mixq_compile.synthetic`; both
with the 2-layer GCN of the paper, ``PlanetoidGCN`` hidden 128, candidates {2, 4, 8}):

1. train the FP32 GCN, quantize it once (its calibration serves the table and every QAT);
2. measure its latency table on this CPU with the default torch backend (``mq.latency_table``, cached in the
   results folder, keyed by CPU, backend, versions, plan and graph size; at ``--measure-threads``);
3. search from one fresh quantized GCN (same seed for every run) with ``λ · penalty`` for each λ in ``--lams``,
   once with the relative BitOPs penalty and once with ``cost="latency"``; plus an all-8-bit reference;
4. freeze at the searched bits, QAT from the trained FP32 weights, export (torch backend, defaults), load;
5. time every artifact in one interleaved session against the all-8-bit one (``time_interleaved``: each between
   two timings of the reference, several rounds), so the latencies compared were taken side by side.

Writes ``runs.csv`` (one row per artifact: bits, BitOPs, accuracy, predicted and measured latency, the CPU),
``summary.json`` (CPU, settings, each table's base, noise and Δ) and ``acc_vs_latency.png`` to
``results/latency_search/``, and prints a summary table.

    python -m experiments.latency_search [--smoke] [--out DIR] [--nodes 50000] [--lams 0.1 1]

One seed per setting: the accuracy differences between single runs are within QAT's own spread (about ±1.5 points
on Cora, see the README); the latencies are what this comparison is about.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

import mixq_compile as mq
from experiments import RESULTS
from experiments.harness import plots
from experiments.harness.common import costs, quantize, seed_everything, torch_threads
from experiments.harness.node import node_data, qat, search, train_fp32
from mixq_compile import cpu
from mixq_compile.latency_measure import robust_spread, time_interleaved
from mixq_compile.models import PlanetoidGCN
from mixq_compile.synthetic import planted_communities
from mixq_compile.training import NodeData

NAME = "latency_search"
BIT_WIDTHS = (2, 4, 8)
PENALTIES = ("bitops", "latency")
COLUMNS = ("dataset", "penalty", "lam", "avg_bits", "gbitops_wa", "predicted_ms", "latency_ms", "latency_spread_ms",
           "delta_vs_all8_ms", "acc")  # fmt: skip


def datasets(args: argparse.Namespace) -> Iterator[tuple[str, NodeData, list[int]]]:
    """(name, data, epochs of FP32 / search / QAT) of every data set asked for."""
    for name in args.datasets:
        if name == "Cora":
            yield "Cora", node_data("Cora"), args.cora_epochs
        else:
            graph = planted_communities(args.nodes, seed=args.seed)
            yield f"synthetic {args.nodes}", NodeData.from_pyg(graph), args.synthetic_epochs


def run_dataset(name: str, data: NodeData, epochs: list[int], args: argparse.Namespace, work: Path):
    """Every run on one data set; returns its rows, its latency table and the FP32 accuracy."""
    fp_epochs, search_epochs, qat_epochs = epochs
    config = {"hidden": args.hidden, "bit_widths": BIT_WIDTHS, "scaling": "relative", "fp_epochs": fp_epochs,
              "search_epochs": search_epochs, "qat_epochs": qat_epochs, "qat_lr": 1e-3}  # fmt: skip
    seed_everything(args.seed)
    fp_model, fp = train_fp32(data, config)
    trained = quantize(fp_model, data.inputs, BIT_WIDTHS)
    slug = name.replace(" ", "_")
    with torch_threads(args.measure_threads):
        table = mq.latency_table(trained, data.inputs, "torch", rounds=args.rounds, warmup=args.warmup,
                                 repeats=args.repeats, cache=args.out / f"table_{slug}.json")  # fmt: skip
    seed_everything(args.seed)
    classes = int(data.y.max()) + 1
    start = quantize(PlanetoidGCN(data.x.shape[1], classes, hidden=args.hidden), data.inputs, BIT_WIDTHS)
    highest = {site: max(q.bit_widths) for site, q in trained.quantizers()}
    settings = [("none", 0.0)] + [(penalty, lam) for penalty in PENALTIES for lam in args.lams]
    rows, artifacts = [], []
    for penalty, lam in tqdm(settings, desc=f"{name}: search + QAT + export"):
        seed_everything(args.seed)
        began = time.perf_counter()
        if penalty == "none":
            bits = highest
        else:
            latency = table if penalty == "latency" else None
            bits = search(data, config | {"lambda": lam}, latency=latency, start=start)
        searched = time.perf_counter()
        frozen, result = qat(fp_model, data, bits, config, quantized=trained)
        path = mq.export(frozen, data.inputs, work / f"{slug}_{penalty}_{lam:g}")
        artifacts.append(mq.load_artifact(path))
        rows.append({
            "cpu": cpu.summary(), "dataset": name, "nodes": data.x.shape[0], "edges": data.edge_index.shape[1],
            "penalty": penalty, "lam": lam, "bits": " ".join(map(str, bits.values())),
            **costs(frozen, data.inputs), "predicted_ms": table.predict(bits), "acc": result.test_at_best_val * 100,
            "val_acc": result.best_val * 100, "fp32_acc": fp.test_at_best_val * 100,
            "search_s": searched - began, "qat_s": time.perf_counter() - searched,
        })  # fmt: skip
    with torch_threads(args.measure_threads):
        timings = time_interleaved(artifacts[0], artifacts[1:], data.inputs, rounds=args.final_rounds,
                                   warmup=args.warmup, repeats=args.repeats, desc=f"{name}: timing")  # fmt: skip
    for index, row in enumerate(rows):
        own = timings.reference_ms if index == 0 else timings.own_ms[index - 1]
        row["latency_ms"] = statistics.median(own)
        row["latency_spread_ms"] = robust_spread(own)
        row["delta_vs_all8_ms"] = 0.0 if index == 0 else timings.median_delta(index - 1)
    return rows, table, fp.test_at_best_val * 100


def table_summary(table: mq.LatencyTable) -> dict:
    """What a table measured: base, noise, every Δ, and the largest |Δ| in units of the noise."""
    largest = max((abs(d) for row in table.delta_ms.values() for d in row.values()), default=0.0)
    return {"base_ms": table.base_ms, "noise_ms": table.noise_ms, "largest_abs_delta_ms": largest,
            "largest_abs_delta_over_noise": largest / table.noise_ms if table.noise_ms else None,
            "delta_ms": table.delta_ms, "cpu": table.cpu, "backend": table.backend}  # fmt: skip


def write_outputs(rows: list[dict], tables: dict, fp32: dict, args: argparse.Namespace, wall_s: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    summary = {"cpu": cpu.describe(), "train_threads": args.threads, "settings": settings, "wall_s": wall_s,
               "fp32_acc": fp32, "tables": tables, "runs": rows}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    where = f"{cpu.model()} [kernel level {cpu.level()}], timed at {args.measure_threads} thread(s), torch backend"
    title = f"PlanetoidGCN (hidden {args.hidden}): BitOPs vs latency penalty, QAT, measured artifacts\n{where}"
    plots.acc_vs_latency(rows, fp32, args.out / "acc_vs_latency.png", title=title)


def print_summary(rows: list[dict], tables: dict) -> None:
    print(f"\n{'data set':<16}{'penalty':<9}{'λ':>6}{'bits':>6}{'GBitOPs':>9}{'pred ms':>9}{'meas ms':>9}"
          f"{'±':>7}{'Δ vs 8b':>9}{'acc %':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['dataset']:<16}{r['penalty']:<9}{r['lam']:>6g}{r['avg_bits']:>6.2f}{r['gbitops_wa']:>9.3f}"
              f"{r['predicted_ms']:>9.2f}{r['latency_ms']:>9.2f}{r['latency_spread_ms']:>7.2f}"
              f"{r['delta_vs_all8_ms']:>9.2f}{r['acc']:>7.2f}")  # fmt: skip
    for name, t in tables.items():
        print(f"{name}: table base {t['base_ms']:.2f} ms, noise {t['noise_ms']:.3f} ms, largest |Δ| "
              f"{t['largest_abs_delta_ms']:.3f} ms")  # fmt: skip
    print(f"CPU: {cpu.summary()}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a 1500-node synthetic graph, hidden 16, 2 epochs")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default: {RESULTS}/{NAME})")
    parser.add_argument("--datasets", nargs="+", choices=("Cora", "synthetic"), default=["Cora", "synthetic"])
    parser.add_argument("--nodes", type=int, default=50_000, help="nodes of the synthetic graph (10 edges each)")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.1, 1.0], help="penalty weights λ")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--cora-epochs", type=int, nargs=3, default=[100, 40, 40], metavar=("FP32", "SEARCH", "QAT"))
    parser.add_argument("--synthetic-epochs", type=int, nargs=3, default=[30, 20, 20],
                        metavar=("FP32", "SEARCH", "QAT"))  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the latency table")
    parser.add_argument("--final-rounds", type=int, default=5, help="interleaved rounds timing the final artifacts")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per timing (their median counts)")
    threads_help = "torch threads of training (on a machine shared with other jobs, more threads than idle cores wait)"
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--measure-threads", type=int, default=1, help="torch threads of every timing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.nodes, args.hidden, args.lams = ["synthetic"], 1500, 16, [1.0]
        args.synthetic_epochs, args.rounds, args.final_rounds, args.warmup, args.repeats = [2, 2, 2], 1, 1, 0, 2
    args.out = args.out or RESULTS / (f"{NAME}-smoke" if args.smoke else NAME)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    rows, tables, fp32 = [], {}, {}
    with torch_threads(args.threads), tempfile.TemporaryDirectory(prefix="mixq_latency_search_") as work:
        for name, data, epochs in datasets(args):
            found, table, fp32[name] = run_dataset(name, data, epochs, args, Path(work))
            rows += found
            tables[name] = table_summary(table)
    write_outputs(rows, tables, fp32, args, time.perf_counter() - started)
    print_summary(rows, tables)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
