"""The bitBLAS worker: builds the planned kernels and runs the glue program, in its own process and environment.

Run as ``python -m mixq_compile.runtimes.bitblas.worker {build,serve} ARTIFACT`` with an interpreter that has
bitblas (and a CUDA torch). The exporting process never imports this module: bitBLAS bundles a TVM fork that
conflicts with apache-tvm, and its import needs CUDA.

- ``build``: constructs one ``bitblas.Matmul`` per plan (``enable_tuning=False``), checks that bitBLAS'
  own ``transform_weight`` of the unpacked codes reproduces the exported packed weights byte for byte, optionally
  writes the CUDA sources and times each kernel, and prints a JSON report.
- ``serve``: registers the kernels as the CUDA implementation of ``mixq_bitblas::matmul``, then answers
  length-prefixed ``torch.save`` requests (input tuples) on stdin with the feature outputs on stdout.
  ``--emulate`` serves on the CPU with the torch emulation instead (no bitblas, no GPU): the protocol's test mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .backend import PLAN_FILE, read_message, write_message
from .layout import BITBLAS_VERSION, MatmulPlan, unpack_weight

KernelKey = tuple[int, int, int]  # (weight width, N, in_features): the op's arguments that select a kernel


def read_plan(directory: Path) -> tuple[dict, list[MatmulPlan]]:
    """The exported plan and its mapped matmuls (unmapped linears stay in the glue's torch code)."""
    plan = json.loads((directory / PLAN_FILE).read_text())
    return plan, [MatmulPlan.from_dict(m) for m in plan["matmuls"] if "unmapped" not in m]


def build_kernels(plans: list[MatmulPlan], target: str | None) -> dict[KernelKey, object]:
    """One ``bitblas.Matmul`` per distinct shape, untuned (tuning takes minutes per kernel and needs the GPU)."""
    import bitblas

    if bitblas.__version__ != BITBLAS_VERSION:
        message = f"bitblas {bitblas.__version__}: the packed layout was written for {BITBLAS_VERSION}"
        warnings.warn(message, stacklevel=2)
    kernels: dict[KernelKey, object] = {}
    for plan in plans:
        key = (plan.width, plan.N, plan.in_features)
        if key not in kernels:
            config = bitblas.MatmulConfig(**plan.matmul_config())
            kernels[key] = bitblas.Matmul(config, target=target, enable_tuning=False)
    return kernels


def packing_matches(kernel, plan: MatmulPlan, packed: torch.Tensor) -> bool:
    """Whether bitBLAS packs the unpacked codes to exactly the exported bytes (guards the layout reimplementation)."""
    codes = unpack_weight(packed.cpu(), plan.width, plan.in_features).t()
    codes = F.pad(codes, (0, plan.K - plan.in_features))
    expected = kernel.transform_weight(codes.contiguous())
    return torch.equal(expected.cpu().view(torch.int8), packed.cpu())


def register_cuda(kernels: dict[KernelKey, object]) -> None:
    """Make the bitBLAS kernels the CUDA implementation of ``mixq_bitblas::matmul`` (the glue's matmul op)."""

    def run(a: torch.Tensor, packed: torch.Tensor, width: int, k: int) -> torch.Tensor:
        kernel = kernels[(width, packed.shape[0], k)]
        return kernel(F.pad(a, (0, kernel.K - k)).contiguous(), packed)

    torch.library.register_kernel("mixq_bitblas::matmul", "cuda", run)


def build(directory: Path, target: str | None, sources: Path | None, bench_rows: int) -> dict:
    """Build, check packing, optionally dump sources and time each kernel; returns the report."""
    plan, plans = read_plan(directory)
    packed = load_file(str(directory / plan["weights"]))
    started = time.perf_counter()
    kernels = build_kernels(plans, target)
    report = {"build_seconds": round(time.perf_counter() - started, 2), "kernels": []}
    for matmul in plans:
        kernel = kernels[(matmul.width, matmul.N, matmul.in_features)]
        entry = {"layer": matmul.layer, "W_dtype": matmul.W_dtype, "N": matmul.N, "K": matmul.K}
        entry["packing_matches_bitblas"] = packing_matches(kernel, matmul, packed[matmul.packed])
        if sources is not None:
            sources.mkdir(parents=True, exist_ok=True)
            (sources / f"{matmul.layer}.cu").write_text(kernel.get_source())
        if bench_rows and torch.cuda.is_available():
            entry["ms"] = _time_kernel(kernel, packed[matmul.packed].cuda(), bench_rows)
        report["kernels"].append(entry)
    return report


def _time_kernel(kernel, weight: torch.Tensor, rows: int, repeats: int = 50) -> float:
    """Mean milliseconds of one call at ``rows`` rows, CUDA-event timed after a warm-up."""
    a = torch.randint(-128, 128, (rows, kernel.K), dtype=torch.int8, device="cuda")
    kernel(a, weight)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        kernel(a, weight)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def serve(directory: Path, emulate: bool, requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer feature-program requests until ``requests`` closes; errors are sent back as strings."""
    plan, plans = read_plan(directory)
    device = "cpu" if emulate else "cuda"
    if not emulate:
        register_cuda(build_kernels(plans, None))
    weights = load_file(str(directory / plan["weights"]), device=device)
    packed = tuple(weights[name] for name in plan["packed_inputs"])
    glue = torch.export.load(directory / plan["glue"]).module().to(device)
    while True:
        try:
            inputs = read_message(requests)
        except EOFError:
            return
        try:
            with torch.no_grad():
                outputs = glue(*(t.to(device) for t in inputs), *packed)
            write_message(replies, tuple(t.cpu() for t in outputs))
        except Exception as error:  # the client raises it with this text
            write_message(replies, f"{type(error).__name__}: {error}")


def _protocol_channel() -> BinaryIO:
    """The real stdout for replies; fd 1 is pointed at stderr so library logs (TVM, nvcc) cannot corrupt frames."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return channel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixq_compile.runtimes.bitblas.worker", description=__doc__)
    parser.add_argument("command", choices=("build", "serve"))
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--target", default=None, help="TVM target (default: bitBLAS detects the GPU)")
    parser.add_argument("--sources", type=Path, default=None, help="build: write each kernel's CUDA source here")
    parser.add_argument("--bench-rows", type=int, default=0, help="build: time each kernel at this many rows")
    parser.add_argument("--emulate", action="store_true", help="serve: CPU emulation, without bitblas or a GPU")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.artifact, args.emulate, sys.stdin.buffer, _protocol_channel())
    else:
        print(json.dumps(build(args.artifact, args.target, args.sources, args.bench_rows), indent=1))


if __name__ == "__main__":
    main()
