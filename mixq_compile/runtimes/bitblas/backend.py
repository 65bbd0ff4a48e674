"""The ``bitblas`` backend: every quantized linear as a bitBLAS int8 x int2/int4/int8 -> int32 GPU matmul.

bitBLAS ships its own TVM fork (which cannot share a process with apache-tvm) and needs CUDA even to import, so
this process never imports it. Export is pure Python and works anywhere:

- *mapping*: each ``linear_int`` of the feature program becomes a :class:`MatmulPlan` (M dynamic, N = out, K = in,
  int8 activations, weights at their site's bit-width rounded up to int2/int4/int8);
- *packing*: weights in bitBLAS' storage layout (:mod:`.bitblas_layout`), in ``packed_weights.safetensors``;
- *glue*: the feature program with each mapped linear replaced by the ``mixq_bitblas::matmul`` op plus a torch
  epilogue (zero-point fold, bias), exported as ``.pt2`` with the packed weights as extra inputs; the structure
  program as ``.pt2``.

Loading starts :mod:`.bitblas_worker` in its own process (``MIXQ_BITBLAS_PYTHON``, default this interpreter), which
builds the kernels and runs the glue on the GPU; here, without CUDA, loading raises with the reason.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, fx
from torch.export import Dim
from torch.fx.passes.shape_prop import ShapeProp

from ...graph_copy import quiet_deepcopy
from ...ir import instructions as K
from ...ir.meta import WEIGHT_SITE_KEY
from ...ir.program import IntegerProgram
from ..base import Backend, Runner
from ..pt2 import export_program, load_pt2, save_program
from .layout import BITBLAS_VERSION, MatmulPlan, bitblas_linear, container_bits, pack_weight, packed_k

PLAN_FILE = "bitblas_plan.json"
WEIGHTS_FILE = "packed_weights.safetensors"
STRUCTURE_FILE = "structure.pt2"
GLUE_FILE = "features_glue.pt2"
PYTHON_ENV = "MIXQ_BITBLAS_PYTHON"
GPU_NEEDED = "bitBLAS kernels need an NVIDIA GPU (sm_80+)"


@dataclass(frozen=True)
class Unmapped:
    """A ``linear_int`` left to torch in the glue, and why (the kernel only takes int8 activations/weights)."""

    layer: str
    reason: str


def worker_python() -> str:
    """The interpreter of the bitBLAS environment: ``$MIXQ_BITBLAS_PYTHON`` or this one."""
    return os.environ.get(PYTHON_ENV, sys.executable)


def cuda_reason() -> str | None:
    """Why this machine cannot run CUDA kernels, asked of the driver (libcuda) so a CPU-only torch build here
    does not hide a GPU that the worker's environment could use."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return f"no CUDA driver: libcuda.so.1 cannot be loaded (no NVIDIA driver on this machine); {GPU_NEEDED}"
    status = cuda.cuInit(0)
    if status != 0:
        return f"no CUDA device: cuInit failed with CUDA error {status}; {GPU_NEEDED}"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return f"no CUDA device: the driver reports no GPU; {GPU_NEEDED}"
    return None


def bitblas_reason(python: str) -> str | None:
    """Whether ``python`` can find the bitblas package, checked without importing it (its import needs CUDA)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('bitblas') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError) as error:
        return f"the bitBLAS worker interpreter {python} cannot run ({error}); set {PYTHON_ENV}"
    if not found:
        return (
            f"bitblas is not installed in {python}; install it in a separate environment (its TVM fork conflicts "
            f"with apache-tvm) with `pip install bitblas=={BITBLAS_VERSION}` and point {PYTHON_ENV} at it"
        )
    return None


# -- mapping -----------------------------------------------------------------------------------------------------


def _m_buckets(rows: int) -> tuple[int, ...]:
    """bitBLAS' dynamic-M hints: 1 and powers of two from 16 up to the example's row count rounded up."""
    buckets, m = [1], 16
    while True:
        buckets.append(m)
        if m >= rows:
            return tuple(buckets)
        m *= 2


def _plan_linear(gm: fx.GraphModule, node: fx.Node, site_bits: dict[str, int]) -> MatmulPlan | Unmapped:
    """The bitBLAS matmul for one ``linear_int`` node, from its operands' recorded dtypes and shapes."""
    q_x, _, w_t, _, _ = node.args
    x_meta = q_x.meta["tensor_meta"]
    weight = gm.get_buffer(w_t.target)
    site = node.meta.get(WEIGHT_SITE_KEY)
    if x_meta.dtype != torch.int8:
        return Unmapped(node.name, f"activation codes are {x_meta.dtype} (more than 8 bits); the kernel takes int8")
    if weight.dtype != torch.int8:
        return Unmapped(node.name, f"weight codes are {weight.dtype} (more than 8 bits); the kernel takes int8")
    if site is None:
        return Unmapped(node.name, f"the lowered weight {w_t.target!r} has no weight site recorded")
    width = container_bits(site_bits[site])
    k, n = weight.shape
    rows = 1
    for size in x_meta.shape[:-1]:
        rows *= size
    return MatmulPlan(
        layer=node.name,
        site=site,
        weight_bits=site_bits[site],
        packed=f"packed_{node.name}",
        in_features=k,
        M=_m_buckets(rows),
        N=n,
        K=packed_k(k, width) * (8 // width),
        W_dtype=f"int{width}",
    )


def _annotated_features(program: IntegerProgram, example_inputs: tuple[Tensor, ...]) -> fx.GraphModule:
    """A copy of the feature program with every node's dtype and shape recorded (for mapping and rewriting)."""
    frontier = tuple(program.structure(*example_inputs))
    gm = quiet_deepcopy(program.features)
    ShapeProp(gm).propagate(*example_inputs, *frontier)
    return gm


def plan_matmuls(program: IntegerProgram, example_inputs: tuple[Tensor, ...]) -> list[MatmulPlan | Unmapped]:
    """One entry per quantized linear of ``program``, in program order: its bitBLAS matmul, or why it has none."""
    gm = _annotated_features(program, example_inputs)
    return [_plan_linear(gm, node, program.site_bits) for node in _linears(gm)]


def _linears(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is K.linear_int]


# -- glue ----------------------------------------------------------------------------------------------------------


def build_glue(
    program: IntegerProgram, example_inputs: tuple[Tensor, ...]
) -> tuple[fx.GraphModule, list[MatmulPlan | Unmapped], dict[str, Tensor]]:
    """The feature program with each mapped linear on ``mixq_bitblas::matmul``, taking the packed weights as extra
    inputs ``features(*inputs, *frontier, *packed)`` so the weights live once, in the safetensors file."""
    gm = _annotated_features(program, example_inputs)
    entries = [_plan_linear(gm, node, program.site_bits) for node in _linears(gm)]
    nodes = {n.name: n for n in _linears(gm)}
    last_input = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    packed: dict[str, Tensor] = {}
    for plan in entries:
        if not isinstance(plan, MatmulPlan):
            continue
        node = nodes[plan.layer]
        q_x, x_zero, w_t, w_sum, bias = node.args
        packed[plan.packed] = pack_weight(gm.get_buffer(w_t.target), plan.width)
        with gm.graph.inserting_after(last_input):
            last_input = gm.graph.placeholder(plan.packed)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(
                bitblas_linear, (q_x, x_zero, last_input, w_sum, bias, plan.width, plan.in_features)
            )
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_buffers() if n not in used]:
        delattr(gm, name)
    gm.graph.lint()
    gm.recompile()
    return gm, entries, packed


def _export_glue(glue: fx.GraphModule, inputs: tuple[Tensor, ...], packed: tuple[Tensor, ...]):
    """``torch.export`` with dynamic inputs and static packed weights (their shapes are fixed by the plan)."""
    dynamic = [{d: Dim.AUTO for d in range(t.dim()) if t.shape[d] != 1} for t in inputs]
    shapes = tuple(dynamic) + tuple(None for _ in packed)
    return torch.export.export(glue, inputs + packed, dynamic_shapes=shapes, strict=False)


def _entry_dict(entry: MatmulPlan | Unmapped) -> dict:
    return entry.to_dict() if isinstance(entry, MatmulPlan) else {"layer": entry.layer, "unmapped": entry.reason}


# -- worker client -------------------------------------------------------------------------------------------------


def write_message(stream, tensors: object) -> None:
    """Length-prefixed ``torch.save`` frame (the worker protocol, both directions)."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    data = buffer.getvalue()
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def read_message(stream) -> object:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the bitBLAS worker closed the connection")
    (size,) = struct.unpack("<Q", header)
    return torch.load(io.BytesIO(stream.read(size)), weights_only=True)


class WorkerRunner:
    """The feature program, run by a ``bitblas_worker serve`` process that holds the built kernels."""

    def __init__(self, directory: Path, python: str, emulate: bool = False) -> None:
        command = [python, "-m", "mixq_compile.runtimes.bitblas.worker", "serve", str(directory)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_repo_root(), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            command + (["--emulate"] if emulate else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        write_message(self.process.stdin, tuple(t.cpu() for t in inputs))
        reply = read_message(self.process.stdout)
        if isinstance(reply, str):
            raise RuntimeError(f"bitBLAS worker: {reply}")
        return tuple(reply)

    def close(self) -> None:
        """End the worker by closing its input (it exits at end of stream)."""
        if getattr(self, "process", None) is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def __del__(self) -> None:
        self.close()


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


class BitblasBackend(Backend):
    name = "bitblas"

    def unavailable_reason(self) -> str | None:
        return cuda_reason() or bitblas_reason(worker_python())

    def versions(self) -> dict[str, str]:
        return {"bitblas_layout": BITBLAS_VERSION}

    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict:
        glue, entries, packed = build_glue(program, example_inputs)
        frontier = tuple(program.structure(*example_inputs))
        save_file(packed, str(directory / WEIGHTS_FILE))
        save_program(export_program(program.structure, example_inputs), directory / STRUCTURE_FILE)
        exported = _export_glue(glue, example_inputs + frontier, tuple(packed.values()))
        save_program(exported, directory / GLUE_FILE)
        plan = {
            "bitblas_version": BITBLAS_VERSION,
            "target": "cuda (sm_80+)",
            "structure": STRUCTURE_FILE,
            "glue": GLUE_FILE,
            "weights": WEIGHTS_FILE,
            "packed_inputs": list(packed),
            "matmuls": [_entry_dict(e) for e in entries],
        }
        (directory / PLAN_FILE).write_text(json.dumps(plan, indent=1))
        return {"plan": PLAN_FILE, **plan}

    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]:
        self.require()
        return load_pt2(directory / entries["structure"]), WorkerRunner(directory, worker_python())
