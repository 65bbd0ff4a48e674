"""Benchmark: inference latency of the TVM artifacts (integer and FP32) against the torch artifact and PyG eager,
side by side in one run, on Cora with a GCN (hidden 128). Artifacts are loaded with ``cache_structure=True``
(topology preprocessing once per graph, as PyG's ``cached=True``).

    python -m experiments.bench_tvm [--data-root ROOT] [--calls 30] [--rounds 3] [--bits 8]

TVM's worker threads keep spinning for a while after each parallel call, which slows whatever runs next on the
same cores. Each backend is therefore timed in its own block of calls, blocks are separated by a pause, and the
blocks are repeated in rotating order over several rounds; the report is the median over all calls.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import mixq_compile as mq
from mixq_compile.models import PlanetoidGCN


def cora(root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    from mixq_compile.data import load_dataset

    data = load_dataset("Cora", root).dataset[0]
    return data.x, data.edge_index


def block(fn, args: tuple, calls: int) -> list[float]:
    """``calls`` timed calls after two warm-up calls, in milliseconds."""
    for _ in range(2):
        fn(*args)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    x, edge_index = cora(args.data_root)
    model = PlanetoidGCN(x.shape[1], 7, hidden=args.hidden).eval()
    qmodel = mq.quantize(model, (x, edge_index))
    qmodel(x, edge_index)  # calibrate
    frozen = mq.freeze(qmodel, bits=dict.fromkeys(qmodel.chosen_bits(), args.bits))
    reference = mq.lower(frozen)(x, edge_index)

    runners = {"pyg_fp32_eager": model}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, backend in (
            ("tvm_int", frozen, "tvm"),
            ("tvm_fp32", model, "tvm"),
            ("torch_int", frozen, "torch"),
        ):
            start = time.perf_counter()
            path = mq.export(source, (x, edge_index), Path(tmp) / name, backend=backend)
            print(f"export {name}: {time.perf_counter() - start:.1f} s")
            runners[name] = mq.load_artifact(path, cache_structure=True)
        error = (runners["tvm_int"](x, edge_index) - reference).abs().max().item()
        print(f"tvm_int vs reference executor: max abs error {error:.3g}")

        times: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        with torch.no_grad():
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    time.sleep(0.3)  # let TVM's spinning workers go idle
                    times[name] += block(runners[name], (x, edge_index), args.calls)
    for name, values in times.items():
        print(f"{name:>16}: median {statistics.median(values):7.2f} ms  (min {min(values):6.2f})")


if __name__ == "__main__":
    main()
