"""Benchmark: time per training step of the MixQ search model (3 candidates) vs the FP32 model on Cora, and the
capture + pass time of each zoo model. The models take turns step by step in one run; results to CSV/JSON.

    python -m experiments.bench_search_step [--data-root ROOT] [--steps 30] [--threads 2] [--out DIR]

Without a data root (``--data-root`` or ``MIXQ_DATA``) it uses a random graph with Cora's sizes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import mixq_compile as mq
from mixq_compile import cpu
from mixq_compile.models import CSLGCN, SAGE, TAG, TUGIN, ArxivGCN, PlanetoidGCN


def cora(data_root: str | None):
    root = data_root or os.environ.get("MIXQ_DATA")
    if root:
        from mixq_compile.data import load_dataset

        data = load_dataset("Cora", root).dataset[0]
        return "Cora", data.x, data.edge_index, data.y, data.train_mask
    gen = torch.Generator().manual_seed(0)
    n, e = 2708, 10556
    x = (torch.rand(n, 1433, generator=gen) < 0.013).float()
    x = x / x.sum(1, keepdim=True).clamp_min(1)
    src, dst = torch.randint(0, n, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)
    y = torch.randint(0, 7, (n,), generator=gen)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:140] = True
    return "Cora-sized random graph", x, torch.stack([src, torch.where(src == dst, (dst + 1) % n, dst)]), y, mask


def interleaved_step_times(models: dict, x, edge_index, y, mask, steps: int, lam: float) -> dict[str, list[float]]:
    """Seconds per training step of each model; the models take turns step by step, so that load from other
    processes on the machine affects all of them alike."""
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=0.01, weight_decay=2e-4) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.train()
    for i in range(steps + 3):
        for name, model in models.items():
            start = time.perf_counter()
            optimizers[name].zero_grad()
            loss = F.cross_entropy(model(x, edge_index)[mask], y[mask])
            if isinstance(model, mq.QuantizedModel):
                loss = loss + lam * mq.penalty(model)
            loss.backward()
            optimizers[name].step()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - start)
    return times


def zoo_capture_times(x, edge_index) -> list[dict]:
    small_x = x[:, :64].contiguous()
    batch = torch.zeros(x.shape[0], dtype=torch.long)
    batch[x.shape[0] // 2 :] = 1
    zoo = {
        "PlanetoidGCN": (PlanetoidGCN(1433, 7), (x, edge_index)),
        "ArxivGCN": (ArxivGCN(64, 7), (small_x, edge_index)),
        "TUGIN": (TUGIN(64, 2), (small_x, edge_index, batch)),
        "CSLGCN": (CSLGCN(64, 10), (small_x, edge_index, batch)),
        "SAGE": (SAGE(64, 7), (small_x, edge_index)),
        "TAG": (TAG(64, 7), (small_x, edge_index)),
    }
    rows = []
    for name, (model, args) in zoo.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qmodel = mq.quantize(model.eval(), args)
        rows.append(
            {"model": name, "capture_and_passes_s": time.perf_counter() - start, "sites": len(qmodel.plan.sites)}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/bench_search_step")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    name, x, edge_index, y, mask = cora(args.data_root)
    classes = int(y.max()) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "fp32": PlanetoidGCN(x.shape[1], classes),
            "mixq": mq.quantize(PlanetoidGCN(x.shape[1], classes), (x, edge_index), (2, 4, 8)),
            "mixq_cached": mq.quantize(
                PlanetoidGCN(x.shape[1], classes), (x, edge_index), config=mq.QuantConfig(cache_structure=True)
            ),
        }
    times = interleaved_step_times(models, x, edge_index, y, mask, args.steps, args.lam)
    medians = {k: statistics.median(v) for k, v in times.items()}
    t_fp32, t_mixq, t_cached = medians["fp32"], medians["mixq"], medians["mixq_cached"]
    zoo = zoo_capture_times(x, edge_index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "cpu": cpu.describe(),
        "data": name,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "fp32_step_ms": t_fp32 * 1e3,
        "mixq_step_ms": t_mixq * 1e3,
        "ratio": t_mixq / t_fp32,
        "mixq_cached_structure_step_ms": t_cached * 1e3,
        "ratio_cached_structure": t_cached / t_fp32,
        "target_ratio": 3.0,
    }
    (out / "summary.json").write_text(json.dumps({"step": summary, "capture": zoo}, indent=1))
    with open(out / "capture.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(zoo[0]))
        writer.writeheader()
        writer.writerows(zoo)
    print(f"\n{name}: training step (median of {args.steps}), on {cpu.summary()}")
    print(
        f"  FP32 {t_fp32 * 1e3:8.2f} ms   MixQ search {t_mixq * 1e3:8.2f} ms   "
        f"ratio {t_mixq / t_fp32:.2f}x (target <= 3x)"
    )
    print(
        f"  MixQ search with cache_structure=True {t_cached * 1e3:8.2f} ms   ratio {t_cached / t_fp32:.2f}x "
        "(the FP32 model recomputes its GCN normalisation every step)"
    )
    print("\ncapture + passes per zoo model:")
    for row in zoo:
        print(f"  {row['model']:<14}{row['capture_and_passes_s']:7.2f} s  {row['sites']:3d} sites")


if __name__ == "__main__":
    main()
