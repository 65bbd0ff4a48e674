"""Latency vs BitOPs: ≥ 8 bit configurations of a GCN, exported to every available backend, on Cora (hidden 128)
or on a large planted-community graph (``--graph large``: 1M nodes, 10M edges, power-law degrees, 128 features,
hidden 256, generated in memory with a fixed seed) where aggregation is memory-bound.

One process run measures, side by side: PyG FP32 eager (as written, and with GCNConv ``cached=True``; timed first
and last, the faster counts), each backend's FP32 artifact, and each backend's integer
artifact for every bit configuration (structure cached, the transductive setting of PyG ``cached=True``; the
uncached integer latency of the 8-bit model is measured too). A backend's artifacts are timed in turns: ``--rounds``
rounds in each of which every artifact makes ``repeats / rounds`` timed calls, so that a slow spell of a shared
machine falls on every configuration alike. Writes ``results/profile_bitops/latency.csv``,
``summary.json`` (config, ratios, Spearman ρ of latency vs BitOPs per backend) and ``latency_vs_bitops.png``.

    python -m experiments.profile_bitops [--data-root DIR] [--backends torch onnx tvm] [--repeats 30] [--smoke]
                                         [--isa avx2] [--graph large [--nodes 1000000]]

Every row and the summary record the CPU (model, kernel level, instruction sets) and the kernels each artifact ran
(``Artifact.kernel_paths``); ``--isa`` forces a lower kernel level (``MIXQ_ISA``) to measure, on a VNNI machine,
the paths an AVX2 or baseline CPU takes (libraries' own dispatch, e.g. onnxruntime's, still sees the real CPU).

Latency depends on shapes and bit-widths only, so the model is randomly initialised (seed 0) and calibrated on the
graph (no training). The large graph's artifacts are exported on a 4,000-node graph of the same kind (artifacts
take any graph size; their self-check then stores that small graph) and timed on the large one; its summary adds
kernel-level timings of the aggregation alone (``mixq::csr_sum`` on int8 codes vs packed 4- and 2-bit codes over
the graph's edges at the hidden width) beside the end-to-end ones.

The artifacts are exported by a child process (the same script with ``--export-to``): compiler
worker pools and runtime thread pools started while exporting would otherwise still run during the timings, which
inflated the first ones by up to 2x. bitBLAS needs a CUDA GPU: where none is present it is skipped with its reason.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import mixq_compile as mq
from experiments import CHECKOUT, RESULTS
from experiments.harness import plots
from experiments.harness.common import eager_does_not_fit
from mixq_compile import cpu, selfcheck
from mixq_compile.models import PlanetoidGCN
from mixq_compile.runtimes import available_backends

OUT = RESULTS / "profile_bitops"
#: the large graph's export stand-in: same features and classes, small enough that self-checks stay small
EXPORT_NODES = 4000
KIND_GROUPS = {
    "weights": {"weight"},
    "activations": {"activation", "linear_out"},
    "message_passing": {"edge_weight", "aggregate"},
}


def bit_configs(sites: dict[str, str], seeds: int = 2) -> dict[str, dict[str, int]]:
    """Named site -> bits assignments: uniform 8/4/2, one group lowered at a time, and random mixes."""

    def assign(default: int, **groups: int) -> dict[str, int]:
        out = {}
        for name, kind in sites.items():
            out[name] = next((b for g, b in groups.items() if kind in KIND_GROUPS[g]), default)
        return out

    configs = {
        "all8": assign(8),
        "all4": assign(4),
        "all2": assign(2),
        "w4": assign(8, weights=4),
        "w2": assign(8, weights=2),
        "act4": assign(8, activations=4),
        "mp4": assign(8, message_passing=4),
        "w2_mp4": assign(8, weights=2, message_passing=4),
        "w4_act4": assign(8, weights=4, activations=4),
    }
    for seed in range(seeds):
        rng = random.Random(seed)
        configs[f"random{seed}"] = {name: rng.choice((2, 4, 8)) for name in sites}
    return configs


def load_graph(args: argparse.Namespace) -> tuple[str, tuple[torch.Tensor, torch.Tensor], tuple, int]:
    """(name, the inputs timed, the inputs exported and calibrated on, classes)."""
    if args.graph == "large":
        from mixq_compile.synthetic import planted_communities

        nodes = 3000 if args.smoke else args.nodes
        big = planted_communities(nodes, avg_degree=args.avg_degree, features=128, seed=0)
        small = planted_communities(EXPORT_NODES, avg_degree=args.avg_degree, features=128, seed=1)
        name = f"planted {_short(nodes)} nodes / {_short(big.edge_index.shape[1])} edges"
        return name, (big.x, big.edge_index), (small.x, small.edge_index), int(big.y.max()) + 1
    if args.smoke:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(300, 64, generator=gen)
        edge_index = torch.randint(0, 300, (2, 1200), generator=gen)
        return "synthetic", (x, edge_index), (x, edge_index), 4
    from mixq_compile.data import load_dataset

    data = load_dataset("Cora", args.data_root).dataset[0]
    return "Cora", (data.x, data.edge_index), (data.x, data.edge_index), int(data.y.max()) + 1


def _short(count: int) -> str:
    """1000000 -> '1M', 3000 -> '3k' (plot titles)."""
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def kernel_rows(edge_index: torch.Tensor, channels: int, repeats: int, tvm: bool = False) -> list[dict]:
    """The aggregation alone over the graph's edges (sorted by target, unweighted) on int8 codes and on 4- and
    2-bit codes of ``channels`` channels, the widths taking turns; the median of ``repeats``: the torch backend's
    ``mixq::csr_sum`` (narrow codes packed beforehand) and, with ``tvm``, the TVM backend's ``csr_rowptr`` followed
    by ``csr_aggregate`` or ``csr_aggregate_narrow`` (which packs tables past ``PACK_FROM_BYTES`` itself, inside
    the timed call)."""
    nodes = int(edge_index.max()) + 1
    order = torch.argsort(edge_index[1])
    dst, src = edge_index[1][order].contiguous(), edge_index[0][order].contiguous()
    zero, gen = torch.tensor(0, dtype=torch.int32), torch.Generator().manual_seed(0)
    calls = {}
    for bits in (8, 4, 2):
        qmin = -(2 ** (bits - 1))
        codes = torch.randint(qmin, -qmin, (nodes, channels), dtype=torch.int8, generator=gen)
        if bits == 8:
            calls[("torch", bits)] = (lambda c: lambda: torch.ops.mixq.csr_sum(dst, src, None, c, zero, nodes))(codes)
        else:
            packed = torch.ops.mixq.pack(codes, qmin, bits)
            calls[("torch", bits)] = (
                lambda p, q, b: lambda: torch.ops.mixq.csr_sum_packed(dst, src, None, p, zero, nodes, q, b, channels)
            )(packed, qmin, bits)
        if tvm:
            calls[("tvm", bits)] = _tvm_aggregation(dst, src, codes, qmin, bits)
    times: dict[tuple, list[float]] = {key: [] for key in calls}
    for backend in ("torch", "tvm"):  # one backend after the other: TVM's spinning workers slow torch's kernels
        for _ in range(repeats + 1):  # the first round warms up
            for key, call in calls.items():
                if key[0] == backend:
                    start = time.perf_counter()
                    call()
                    times[key].append((time.perf_counter() - start) * 1e3)
    medians = {key: sorted(t[1:])[len(t[1:]) // 2] for key, t in times.items()}
    ops = {"torch": ("csr_sum", "csr_sum_packed"), "tvm": ("csr_aggregate", "csr_aggregate_narrow")}
    return [
        {
            "cpu": cpu.summary(),
            "backend": backend,
            "op": ops[backend][bits < 8] + ("" if bits == 8 else f" (2^{bits} levels)"),
            "bits": bits,
            "nodes": nodes,
            "edges": int(edge_index.shape[1]),
            "channels": channels,
            "median_ms": ms,
            "speedup_over_int8": medians[(backend, 8)] / ms,
            "table_bytes_per_row": channels * bits // 8,
        }
        for (backend, bits), ms in medians.items()
    ]


def _tvm_aggregation(dst: torch.Tensor, src: torch.Tensor, codes: torch.Tensor, qmin: int, bits: int):
    """A call of the TVM backend's CSR kernels for ``codes`` (int8 at 8 bits, the narrow kernel below), built for
    this CPU with torch's thread count, on the same sorted edges: the row pointers (as the torch op, every call),
    then the row sums, into buffers allocated once, as the Relax VM's pooled allocator serves an artifact's
    intermediates (the torch op allocates its output every call: a fresh 1 GB int32 output, 1M nodes x 256
    channels, cost TVM's kernel ~0.6 s of page faults when measured that way: 988 ms against 379)."""
    import tvm

    from mixq_compile.ops.packed import packed_stride
    from mixq_compile.runtimes.tvm import kernels as TK
    from mixq_compile.runtimes.tvm.backend import host_target, runtime_threads

    runtime_threads()
    nodes, channels = codes.shape

    def built(kernel):
        return tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), host_target())["main"]

    rowptr_kernel = built(TK.csr_rowptr)
    if bits == 8:
        kernel = built(TK.csr_aggregate(channels, "int8", None, True))
    else:
        kernel = built(TK.csr_aggregate_narrow(channels, bits, qmin, None))
    dst_t, src_t, table = (tvm.runtime.from_dlpack(t) for t in (dst, src, codes))
    operands = [tvm.runtime.tensor(np.zeros(1, np.int32)), table, tvm.runtime.tensor(np.zeros(channels, np.int32))]

    rowptr, outputs = tvm.runtime.empty((nodes + 1,), "int64"), [tvm.runtime.empty((nodes, channels), "int32")]
    if bits < 8:
        outputs.append(tvm.runtime.empty((nodes, packed_stride(channels, bits)), "uint8"))

    def call() -> None:
        rowptr_kernel(dst_t, rowptr)
        kernel(rowptr, src_t, *operands, *outputs)

    return call


def cached_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same FP32 model with PyG's ``cached=True`` on every GCNConv (normalisation computed once per graph)."""
    from torch_geometric.nn import GCNConv

    cached = copy.deepcopy(model)
    for module in cached.modules():
        if isinstance(module, GCNConv):
            module.cached = True
    return cached


def artifact_bytes(path: Path | None) -> dict[str, int | None]:
    """Bytes on disk of an artifact directory: every file, and its programs alone (without the self-check's copy
    of the example graph, the same for every bit configuration). ``None`` for the PyG baselines."""
    if path is None:
        return {"artifact_bytes": None, "program_bytes": None}
    sizes = {f.name: f.stat().st_size for f in path.iterdir() if f.is_file()}
    return {"artifact_bytes": sum(sizes.values()), "program_bytes": sum(sizes.values()) - sizes.get(selfcheck.FILE, 0)}


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic) if len(xs) > 2 else float("nan")


#: int32 ``[E, hidden]`` tensors an ONNX aggregation holds at once (gathered messages, weighted, prefix sums)
ONNX_MESSAGE_COPIES = 3.0


def runnable_backends(args: argparse.Namespace, edges: int) -> tuple[list, dict[str, str]]:
    """The requested backends available here, and why the others are skipped: besides what
    :func:`available_backends` says, an ONNX aggregation whose int32 ``[E, hidden]`` tensors would not fit in
    memory (the large graph: ~34 GiB; it was OOM-killed) is skipped with that reason, as PyG eager is."""
    backends, skipped = available_backends(args.backends)
    too_big = eager_does_not_fit(edges, args.hidden, copies=ONNX_MESSAGE_COPIES, usable=0.7)
    if too_big:
        skipped.update({name: f"onnx: {too_big}" for backend, name, _ in backends if backend == "onnx"})
        backends = [b for b in backends if b[0] != "onnx"]
    return backends, skipped


def export_all(args: argparse.Namespace, folder: Path) -> None:
    """Export the FP32 model and every bit configuration to every available backend; list them in targets.json."""
    model, qmodel, timed, inputs, _ = build(args)
    backends, _ = runnable_backends(args, timed[1].shape[1])
    targets: list[tuple[str, str, str, str, bool, str]] = []  # (name, backend, precision, config, cached, path)
    configs = bit_configs_for(qmodel, args.smoke)
    with tqdm(total=len(backends) * (len(configs) + 1), desc="export") as bar:
        for backend, name, options in backends:
            root = folder / backend.replace(":", "_")
            path = mq.export(model, inputs, root / "fp32", backend=name, backend_options=options)
            targets.append(("fp32", backend, "fp32", "fp32", True, str(path)))
            bar.update()
            for config, bits in configs.items():
                frozen = mq.freeze(qmodel, bits).eval()
                path = mq.export(frozen, inputs, root / config, backend=name, backend_options=options)
                targets.append((config, backend, "integer", config, True, str(path)))
                if config == "all8":
                    targets.append((config, backend, "integer", config, False, str(path)))
                bar.update()
    (folder / "targets.json").write_text(json.dumps(targets))


def build(args: argparse.Namespace):
    """The FP32 GCN (seed 0, so parent and export child build the same weights), its mixed model, the inputs timed
    and those exported on, and the graph's name."""
    dataset, inputs, export_inputs, classes = load_graph(args)
    torch.manual_seed(0)
    model = PlanetoidGCN(inputs[0].shape[1], classes, hidden=args.hidden).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, export_inputs, (2, 4, 8))
    return model, qmodel, inputs, export_inputs, dataset


def bit_configs_for(qmodel, smoke: bool) -> dict[str, dict[str, int]]:
    configs = bit_configs({row.name: row.kind for row in mq.sites(qmodel)})
    return {k: configs[k] for k in ("all8", "w2_mp4", "all2")} if smoke else configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "torch:aot_inductor", "onnx", "tvm", "bitblas"],
        help="TVM last: its spinning thread pool slows whatever runs after it in the same process",
    )
    parser.add_argument("--graph", choices=["cora", "large"], default="cora")
    parser.add_argument("--nodes", type=int, default=1_000_000, help="nodes of the large graph")
    parser.add_argument("--avg-degree", type=float, default=10.0, help="edges per node of the large graph")
    parser.add_argument("--hidden", type=int, default=None, help="default: 128 (Cora), 256 (large)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 (Cora), 1 (large)")
    parser.add_argument("--repeats", type=int, default=None, help="default: 30 (Cora), 6 (large)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each artifact's timed calls are split into")
    parser.add_argument("--out", type=Path, default=None, help="default: results/profile_bitops[_large]")
    parser.add_argument("--smoke", action="store_true", help="synthetic graph, 2 configs, few repeats")
    parser.add_argument("--isa", choices=["native", *cpu.LEVELS], default=None,
                        help="force this kernel level (MIXQ_ISA) in the export child and the measurements")  # fmt: skip
    parser.add_argument("--export-to", type=Path, default=None, help=argparse.SUPPRESS)  # the export child
    args = parser.parse_args(argv)
    large = args.graph == "large"
    args.hidden = args.hidden or (256 if large else 128)
    args.warmup = args.warmup if args.warmup is not None else (1 if large else 5)
    args.repeats = args.repeats or (6 if large else 30)
    args.out = args.out or (RESULTS / "profile_bitops_large" if large else OUT)
    if args.isa is not None:
        os.environ[cpu.ENV] = args.isa
        cpu.level()  # a level this CPU cannot run fails here, with the reason
    if args.export_to is not None:
        export_all(args, args.export_to)
        return 0
    if args.smoke:
        args.warmup, args.repeats = 1, 3

    model, qmodel, inputs, _, dataset = build(args)
    configs = bit_configs_for(qmodel, args.smoke)
    backends, skipped = runnable_backends(args, inputs[1].shape[1])
    for name, reason in skipped.items():
        print(f"skipping backend {name}: {reason}", file=sys.stderr)

    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="mixq_profile_"))
    started = time.perf_counter()

    def measure(target, name: str, backend: str, precision: str, config: str, cached: bool) -> None:
        """Time one callable (a PyG baseline) in one block and append its row."""
        measure_in_turns([(target, name, backend, precision, config, cached)], 1)

    def measure_in_turns(targets: list[tuple], rounds: int) -> None:
        """``rounds`` rounds in which every target takes its turn (``repeats / rounds`` timed calls after its warm-up),
        the medians taken over all of a target's calls: slow drifts of a shared machine then fall on every
        configuration alike instead of on whichever was timed during them (single configurations moved by +-15 %
        between back-to-back blocks on these VMs). Artifacts are loaded for each turn (the loaded self-check is
        small) so that one at a time holds its caches and buffers."""
        per_round = max(1, args.repeats // rounds)
        times: dict[int, list[float]] = {i: [] for i in range(len(targets))}
        reports: dict[int, mq.ProfileReport] = {}
        for _ in range(rounds):
            for i, (target, name, _, _, _, cached) in enumerate(targets):
                loaded = mq.load_artifact(target, cache_structure=cached) if isinstance(target, str) else target
                reports[i] = mq.profile(loaded, inputs, warmup=args.warmup, repeats=per_round, name=name)
                times[i].extend(reports[i].times_ms)
                del loaded
                bar.update(1 / rounds)
        for i, (target, _, backend, precision, config, cached) in enumerate(targets):
            report, calls = reports[i], sorted(times[i])
            paths = report.kernel_paths or {}
            rows.append({
                "cpu": cpu.summary(), "kernel_paths": "; ".join(f"{k}={v}" for k, v in paths.items()),
                "dataset": dataset, "backend": backend, "precision": precision, "config": config, "cached": cached,
                "median_ms": statistics.median(calls), "p10_ms": calls[len(calls) // 10],
                "p90_ms": calls[(9 * len(calls)) // 10], "calls": len(calls), "rounds": rounds,
                "throughput_per_s": 1e3 / statistics.median(calls), "peak_rss_mib": report.peak_rss_mib,
                "gbitops_wa": (report.bitops_wa or 0) / 1e9, "gbitops_paper": (report.bitops_paper or 0) / 1e9,
                "avg_bits": report.avg_bits, "model_bytes": report.model_bytes,
                **artifact_bytes(Path(target) if isinstance(target, str) else None),
            })  # fmt: skip

    try:
        child = [sys.executable, "-m", "experiments.profile_bitops", "--export-to", str(work)]
        child += ["--hidden", str(args.hidden), "--backends", *args.backends, *(["--smoke"] if args.smoke else [])]
        child += ["--graph", args.graph, "--nodes", str(args.nodes), "--avg-degree", str(args.avg_degree)]
        child += ["--data-root", args.data_root] if args.data_root else []
        subprocess.run(child, check=True, cwd=CHECKOUT)
        targets = json.loads((work / "targets.json").read_text())
        print("measure phase", flush=True)
        eager_skipped = eager_does_not_fit(inputs[1].shape[1], args.hidden, usable=0.7)
        if eager_skipped:
            print(f"skipping PyG eager: {eager_skipped}", file=sys.stderr)
        with tqdm(total=len(targets) + (0 if eager_skipped else 4), desc="measure") as bar:
            if not eager_skipped:
                with torch.no_grad():  # warm the process (thread pools, allocator) before the first timed baseline
                    for _ in range(4 * args.warmup):
                        model(*inputs)
                measure(model, "pyg_fp32_eager", "eager", "fp32", "fp32", False)
                measure(cached_copy(model), "pyg_fp32_eager_cached", "eager", "fp32", "fp32_cached", True)
            for backend in dict.fromkeys(t[1] for t in targets):  # one backend after another, in turns within one
                group = [(path, name, b, precision, config, cached)
                         for name, b, precision, config, cached, path in targets if b == backend]  # fmt: skip
                measure_in_turns(group, args.rounds)
            # The baselines again, last: the ratios use the faster of the two timings (the conservative choice).
            if not eager_skipped:
                measure(model, "pyg_fp32_eager", "eager", "fp32", "fp32_end", False)
                measure(cached_copy(model), "pyg_fp32_eager_cached", "eager", "fp32", "fp32_cached_end", True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    eager_ms = min((r["median_ms"] for r in rows if r["config"] in ("fp32", "fp32_end") and r["backend"] == "eager"),
                   default=None)  # fmt: skip
    eager_cached_ms = min((r["median_ms"] for r in rows if r["config"].startswith("fp32_cached")), default=None)
    rho, ratios = {}, {}
    for backend, _, _ in backends:
        pts = [r for r in rows if r["backend"] == backend and r["precision"] == "integer" and r["cached"]]
        rho[backend] = spearman([r["gbitops_wa"] for r in pts], [r["median_ms"] for r in pts])
        fp32_ms = next(r["median_ms"] for r in rows if r["backend"] == backend and r["precision"] == "fp32")
        best = min(pts, key=lambda r: r["median_ms"])
        int8 = next(r for r in pts if r["config"] == "all8")
        ratios[backend] = {
            "best_config": best["config"],
            "eager_over_best_integer": eager_ms and eager_ms / best["median_ms"],
            "eager_over_int8": eager_ms and eager_ms / int8["median_ms"],
            "eager_cached_over_best_integer": eager_cached_ms and eager_cached_ms / best["median_ms"],
            "own_fp32_over_int8": fp32_ms / int8["median_ms"],
            "own_fp32_over_best_integer": fp32_ms / best["median_ms"],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    use_tvm = any(backend == "tvm" for backend, _, _ in backends)
    kernels = kernel_rows(inputs[1], args.hidden, args.repeats, tvm=use_tvm) if large else []
    if kernels:
        with (args.out / "kernels.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(kernels[0]))
            writer.writeheader()
            writer.writerows(kernels)
    with (args.out / "latency.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "cpu": cpu.describe(),
        "dataset": dataset,
        "eager_ms": eager_ms,
        "eager_cached_ms": eager_cached_ms,
        "eager_skipped": eager_skipped,
        "hidden": args.hidden,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "configs": configs,
        "skipped_backends": skipped,
        "spearman_rho_latency_vs_bitops": rho,
        "ratios": ratios,
        "all8_over_all2": {b: _config_ratio(rows, b, "all8", "all2") for b, _, _ in backends},
        "program_bytes_all2_over_all8": {
            b: _config_ratio(rows, b, "all2", "all8", "program_bytes") for b, _, _ in backends
        },
        "kernels": kernels,
        "wall_s": time.perf_counter() - started,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    where = f"{cpu.model()} [kernel level {cpu.level()}], {torch.get_num_threads()} threads"
    title = f"{dataset} GCN (hidden {args.hidden}): latency vs BitOPs per backend\n{where}"
    plots.latency_vs_bitops(rows, rho, args.out / "latency_vs_bitops.png", title=title)

    print(f"\n{'backend':<8}{'precision':<10}{'config':<10}{'cached':<7}{'median ms':>10}{'GBitOPs wa':>12}")
    for r in rows:
        print(f"{r['backend']:<8}{r['precision']:<10}{r['config']:<10}{r['cached']!s:<7}"
              f"{r['median_ms']:>10.3f}{r['gbitops_wa']:>12.3f}")  # fmt: skip
    for backend, ratio in ratios.items():
        print(f"{backend}: ρ={rho[backend]:.2f}; " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                                               for k, v in ratio.items()))  # fmt: skip
    for k in kernels:
        print(f"kernel {k['op']}: {k['median_ms']:.1f} ms ({k['speedup_over_int8']:.2f}x int8)")
    print(f"CPU: {cpu.summary()}")
    print(f"results in {args.out}")
    return 0


def _config_ratio(rows: list[dict], backend: str, slow: str, fast: str, column: str = "median_ms") -> float | None:
    """``column`` (latency by default) of config ``slow`` over config ``fast`` on ``backend`` (None where either
    was not measured)."""
    value = {
        r["config"]: r[column] for r in rows if r["backend"] == backend and r["cached"] and r["precision"] == "integer"
    }
    return value[slow] / value[fast] if slow in value and fast in value else None


if __name__ == "__main__":
    sys.exit(main())
