"""Benchmark: forward latency on Cora of the ONNX integer artifact vs the ONNX FP32 artifact vs PyG FP32 eager.

    python experiments/bench_onnx.py [--data-root ROOT] [--calls 30] [--profile DIR]

GCN (hidden 128) frozen at 8 bits everywhere and at a mixed configuration (4/2-bit weights, 4-bit edge weights),
each exported with ``backend="onnx"`` and loaded with ``cache_structure=True`` (transductive: self loops,
normalisation and edge sorting happen once). All variants are timed round-robin in one process, so load from other
jobs hits them alike; the median of ``--calls`` calls is reported. onnxruntime runs 2 intra-op threads; PyG eager
runs with 2 torch threads and, as a second entry, with 1. Every integer artifact is also checked against
the PyTorch integer executor. ``--profile`` writes onnxruntime per-op profiles of the integer artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import mixq_compile as mq
from mixq_compile.artifact import export, load_artifact
from mixq_compile.models import PlanetoidGCN

MIXED_BITS = {
    "conv1.lin.weight": 4,
    "conv2.lin.weight": 2,
    "conv1.edge_weight": 4,
    "conv2.edge_weight": 4,
}


def cora(root: str):
    from mixq_compile.data import load_dataset

    data = load_dataset("Cora", root).dataset[0]
    return data.x, data.edge_index


def frozen_models(model: torch.nn.Module, args: tuple) -> dict[str, mq.QuantizedModel]:
    """The 8-bit and the mixed frozen model (both calibrated on ``args``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eight = mq.freeze(mq.quantize(model, args, (8,))).eval()
        search = mq.quantize(model, args, (2, 4, 8))
        bits = {site: 8 for site in search.chosen_bits()} | MIXED_BITS
        mixed = mq.freeze(search, bits=bits).eval()
    return {"int8": eight, "mixed": mixed}


def round_robin(candidates: dict[str, Callable[[], object]], calls: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each candidate, interleaved call by call so that background load hits all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(calls):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("MIXQ_DATA", "/work/shared/datasets"))
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--profile", type=Path, default=None)
    opts = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, edge_index = cora(opts.data_root)
    args = (x, edge_index)
    model = PlanetoidGCN(x.shape[1], 7, hidden=128).eval()
    frozen = frozen_models(model, args)

    candidates: dict[str, Callable[[], object]] = {}
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        fp32 = load_artifact(export(model, args, Path(tmp) / "fp32", backend="onnx"), cache_structure=True)
        candidates["onnx_fp32"] = lambda: fp32(*args)
        if opts.profile is not None:
            _profile(fp32.path, args, opts.profile / "fp32")
        for name, qmodel in frozen.items():
            path = export(qmodel, args, Path(tmp) / name, backend="onnx")
            artifact = load_artifact(path, cache_structure=True)
            reference = mq.lower(qmodel)(*args)
            scale = float(reference.abs().max())
            report[name] = {
                "max_abs_error_vs_torch_integer": float((artifact(*args) - reference).abs().max()),
                "output_abs_max": scale,
                "model_bytes_onnx": sum(p.stat().st_size for p in Path(path).glob("*.onnx")),
            }
            candidates[f"onnx_{name}"] = lambda a=artifact: a(*args)
            if opts.profile is not None:
                _profile(path, args, opts.profile / name)
        candidates["pyg_fp32_eager"] = lambda: model(*args)
        candidates["pyg_fp32_eager_1thread"] = lambda: _one_thread(model, args)
        times = round_robin(candidates, opts.calls)
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    result = {
        "graph": {"nodes": x.shape[0], "edges": edge_index.shape[1], "features": x.shape[1]},
        "median_ms": medians,
        "ratio_vs_onnx_fp32": {n: medians["onnx_fp32"] / m for n, m in medians.items()},
        "checks": report,
        "calls": opts.calls,
        "threads": 2,
    }
    print(json.dumps(result, indent=1))


def _one_thread(model: torch.nn.Module, args: tuple) -> object:
    """PyG eager on one thread: with other jobs on the machine, two OpenMP threads can be far slower than one."""
    torch.set_num_threads(1)
    try:
        return model(*args)
    finally:
        torch.set_num_threads(2)


def _profile(path: Path, args: tuple, out: Path) -> None:
    """Per-op onnxruntime profile of the feature graph (structure computed once, as when cached)."""
    import onnxruntime as ort

    from mixq_compile.runtimes.onnx_ort import SESSION_CONFIG

    artifact = load_artifact(path)
    frontier = artifact.structure(*args)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.enable_profiling = True
    out.mkdir(parents=True, exist_ok=True)
    options.profile_file_prefix = str(out / "features")
    session = ort.InferenceSession(str(Path(path) / "features.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (*args, *frontier))}
    for _ in range(20):
        session.run(None, feeds)
    print(f"profile: {session.end_profiling()}")


if __name__ == "__main__":
    main()
