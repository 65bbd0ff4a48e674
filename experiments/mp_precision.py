"""Message passing at different precisions (the seed's microbenchmark, MIXQ_METHOD.md §7.1), measured here.

One sum-aggregation pass over each data set's raw features: gather ``x_j`` along ``edge_index[0]``, multiply by an
edge weight, ``scatter_add_`` into the targets, with x (and the accumulator) in float32, int32, int16 and int8, as
the reference script does (its int8/int16 accumulators can overflow: it measures speed, not correctness). We add
the exact integer path our integer program uses (int8 codes gathered, accumulated in int32). Speed-up =
t_fp32 / t_dtype; the paper's AMD EPYC 9534 column is listed next to ours.

    python -m experiments.mp_precision [--data-root DIR] [--repeats 10] [--smoke]

Writes ``results/mp_precision/mp_precision.csv`` and ``mp_precision.png``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from experiments import RESULTS
from experiments.harness import paper, plots

OUT = RESULTS / "mp_precision"
DATASETS = ("Cora", "CiteSeer", "IMDB-BINARY", "IMDB-MULTI", "PROTEINS", "MUTAG")
PATHS = ("fp32", "int32", "int16", "int8", "int8->int32 (exact)")


def graph_of(name: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features and edges of a node data set, or of a whole graph data set batched together."""
    from mixq_compile.data import load_dataset

    loaded = load_dataset(name, root)
    if loaded.task == "node":
        data = loaded.dataset[0]
        return data.x, data.edge_index
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(loaded.dataset, batch_size=len(loaded.dataset))))
    return batch.x.float(), batch.edge_index


def aggregation(path: str, x: torch.Tensor, edge_index: torch.Tensor):
    """A closure running one aggregation pass on ``path``'s dtypes (inputs prepared outside the timing)."""
    src, dst = edge_index
    weight = torch.rand(edge_index.shape[1], 1)
    scale = (x.max() - x.min()).clamp_min(1e-8) / 255
    if path == "fp32":
        xs, w, acc_dtype = x, weight, torch.float32
    elif path == "int8->int32 (exact)":
        xs, w, acc_dtype = torch.round(x / scale).clamp(-128, 127).to(torch.int8), (weight * 127).to(torch.int8), None
    else:
        dtype = getattr(torch, path)
        info = torch.iinfo(dtype)
        xs = torch.round(x / scale).clamp(info.min, info.max).to(dtype)
        w, acc_dtype = (weight * 127).to(dtype), dtype
    index = dst.view(-1, 1).expand(-1, x.shape[1])
    rows = x.shape[0]

    def run() -> torch.Tensor:
        messages = xs.index_select(0, src)
        if acc_dtype is None:  # exact: widen to int32 before the product and the sum
            messages = messages.to(torch.int32) * w.to(torch.int32)
            out = torch.zeros(rows, x.shape[1], dtype=torch.int32)
        else:
            messages = messages * w
            out = torch.zeros(rows, x.shape[1], dtype=acc_dtype)
        return out.scatter_add_(0, index, messages)

    return run


def time_it(fn, warmup: int, repeats: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.mean(times), statistics.pstdev(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the reference pinned one core)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--smoke", action="store_true", help="one synthetic graph, 2 repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.smoke:
        graphs = {"synthetic": (torch.randn(200, 32), torch.randint(0, 200, (2, 800)))}
        args.warmup, args.repeats = 1, 2
    else:
        graphs = {}
        for name in args.datasets:
            try:
                graphs[name] = graph_of(name, args.data_root)
            except FileNotFoundError as error:
                print(f"skipping {name}: {error}", file=sys.stderr)
    rows = []
    for name, (x, edge_index) in tqdm(graphs.items(), desc="data sets"):
        fp32_mean = None
        for path in PATHS:
            mean, std = time_it(aggregation(path, x, edge_index), args.warmup, args.repeats)
            fp32_mean = mean if path == "fp32" else fp32_mean
            published = paper.MP_SPEEDUP_AMD.get(name)
            paper_speedup = dict(zip(("int8", "int16", "int32"), published)).get(path) if published else None
            rows.append({
                "dataset": name, "nodes": x.shape[0], "edges": edge_index.shape[1], "features": x.shape[1],
                "ops": 2 * edge_index.shape[1] * x.shape[1], "path": path, "mean_ms": mean * 1e3, "std_ms": std * 1e3,
                "speedup": fp32_mean / mean, "paper_amd_speedup": paper_speedup,
            })  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "mp_precision.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    speedups = {p: {r["dataset"]: r["speedup"] for r in rows if r["path"] == p} for p in PATHS if p != "fp32"}
    title = "Sum aggregation (gather, edge-weight multiply, scatter_add) by precision, this CPU"
    plots.speedup_bars(speedups, args.out / "mp_precision.png", title=title)
    print(f"\n{'dataset':<13}{'path':<21}{'mean ms':>9}{'speed-up':>10}{'paper AMD':>10}")
    for r in rows:
        published = f"{r['paper_amd_speedup']:.2f}" if r["paper_amd_speedup"] is not None else "-"
        print(f"{r['dataset']:<13}{r['path']:<21}{r['mean_ms']:>9.3f}{r['speedup']:>10.2f}{published:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
