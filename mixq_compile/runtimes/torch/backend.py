"""The ``torch`` backend: the integer program as ``torch.export`` programs (``.pt2``).

The integer kernels are ATen ops (round/clamp) and ``torch.ops.mixq.linear_int`` (the integer GEMM with a
kernel picked at run time for the CPU, exact on every one: :mod:`mixq_compile.ops.linear`), plus, by
default, ``torch.ops.mixq.csr_sum`` for sum aggregations (:mod:`mixq_compile.ops.csr`): the structure
program also sorts each aggregation's edges by target, and the feature program sums over them as a CSR product
instead of an ``[E, C]`` gather/scatter; and ``torch.ops.mixq.quantize_linear`` for the input layer (quantize +
first GEMM in one pass that skips zero features, :mod:`mixq_compile.ops.input_linear`). Such files need
``import mixq_compile`` before ``torch.export.load``; with ``sparse_aggregation=False`` the program keeps its
integer scatter-adds. Without AOTInductor, ``quantize`` and ``requantize`` instructions become
``torch.ops.mixq.quantize`` / ``requantize`` (the same arithmetic in one pass, :mod:`mixq_compile.ops.elementwise`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ... import cpu
from ...errors import InputValueError
from ...ir.program import IntegerProgram
from ...lowering.csr_aggregation import csr_features, find_aggregations, sorted_structure
from ...lowering.fold_relu import fold_relu
from ...lowering.fuse_input_linear import fuse_input_linear
from ...lowering.fuse_requantize import fuse_requantize
from ...lowering.pack_codes import pack_narrow_codes
from ...ops import linear, native
from ..base import Backend, Runner
from ..pt2 import export_program, load_pt2, no_grad_tuple, save_program
from .integer_ops import dispatching_ops

STRUCTURE_FILE = "structure.pt2"
FEATURES_FILE = "features.pt2"
AOTI_FILE = "features_aoti.pt2"


class TorchBackend(Backend):
    """Options: ``aot_inductor=True`` compiles the feature program ahead of time with AOTInductor (fused C++
    kernels for the element-wise quantize/requantize chains; needs a C++ compiler at export, ~30 s per model);
    ``sparse_aggregation=False`` keeps the scatter-add aggregations; ``sparse_input=False`` keeps the input layer's
    quantize and dense GEMM apart (by default they are one ``mixq::quantize_linear``, which skips zero features);
    ``packed=False`` keeps 2- and 4-bit codes in int8 containers (by default aggregations and input layers read them
    packed, :mod:`mixq_compile.lowering.pack_codes`)."""

    name = "torch"

    def __init__(
        self,
        aot_inductor: bool = False,
        sparse_aggregation: bool = True,
        sparse_input: bool = True,
        packed: bool = True,
    ) -> None:
        self.aot_inductor = aot_inductor
        self.sparse_aggregation = sparse_aggregation
        self.sparse_input = sparse_input
        self.packed = packed

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict:
        structure, features, aggregations = program.structure, program.features, []
        if self.sparse_aggregation:
            frontier = tuple(structure(*example_inputs))
            aggregations = find_aggregations(features, len(example_inputs), frontier)
            structure, features = sorted_structure(structure, aggregations), csr_features(features, aggregations)
        fused = 0
        if self.sparse_input:
            features, fused = fuse_input_linear(features)
        features = dispatching_ops(features, op_by_op=not self.aot_inductor)
        features, requantized = fuse_requantize(features)
        features, relus = fold_relu(features)
        packed = 0
        if self.packed:
            features, packed = pack_narrow_codes(features)
        frontier = tuple(structure(*example_inputs))
        save_program(export_program(structure, example_inputs), directory / STRUCTURE_FILE)
        exported = export_program(features, example_inputs + frontier)
        entries = {"structure": STRUCTURE_FILE, "csr_aggregations": len(aggregations), "fused_input_linears": fused,
                   "fused_requantizes": requantized, "folded_relus": relus, "packed_ops": packed}  # fmt: skip
        checked = read_only_by_quantize_linear(features, len(example_inputs))
        entries |= {"finite_checked_inputs": checked}
        if self.aot_inductor:
            torch._inductor.aoti_compile_and_package(exported, package_path=str(directory / AOTI_FILE))
            return entries | {"features": AOTI_FILE, "aot_inductor": True}
        save_program(exported, directory / FEATURES_FILE)
        return entries | {"features": FEATURES_FILE, "aot_inductor": False}

    def kernel_paths(self, entries: dict) -> dict[str, str]:
        reason = native.unavailable_reason()
        described = {
            "int8_amx": "AMX tiles, native C",
            "int8_vnni": "torch._int_mm",
            "int8_pairs": "int16-pair GEMM, native C",
            "float_exact": "K-chunked FP32 GEMM, exact",
        }
        gemm = linear.int8_path()
        return {
            "linear_int": f"{gemm} ({described[gemm]})",
            "native_kernels": f"C, built for {cpu.level()}" if reason is None else f"ATen fallback ({reason})",
            "features": "AOTInductor" if entries.get("aot_inductor") else "torch.export program",
        }

    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]:
        structure = load_pt2(directory / entries["structure"])
        if entries.get("aot_inductor"):
            features = no_grad_tuple(torch._inductor.aoti_load_package(str(directory / entries["features"])))
            return structure, input_errors_raised(features)
        return structure, load_pt2(directory / entries["features"])


def input_errors_raised(run: Runner) -> Runner:
    """``run`` raising the :class:`~mixq_compile.errors.InputValueError` a ``mixq::`` op raised (NaN/Inf features
    found by the input layer), which AOTInductor's proxy executor hands back as a ``RuntimeError`` carrying its
    text: the artifact then need not scan the features for NaN/Inf before the call (Cora all-8 1.49 -> 1.06 ms,
    Intel Xeon, 2 threads)."""

    def call(*inputs: Tensor) -> tuple[Tensor, ...]:
        try:
            return run(*inputs)
        except RuntimeError as error:
            text = str(error)
            start = text.find(_INPUT_ERROR)
            if start < 0:
                raise
            message = text[start + len(_INPUT_ERROR) :].split("\n\nAt:", 1)[0].strip()
            raise InputValueError(message) from error

    return call


_INPUT_ERROR = f"{InputValueError.__name__}: "


def read_only_by_quantize_linear(features: torch.fx.GraphModule, inputs: int) -> list[int]:
    """The positions of graph inputs that only ``mixq::quantize_linear`` reads: it raises the signature's NaN/Inf
    error itself, so the artifact need not scan them first (under AOTInductor, see :func:`input_errors_raised`)."""
    placeholders = [n for n in features.graph.nodes if n.op == "placeholder"][:inputs]
    mixq = torch.ops.mixq
    fused = {mixq.quantize_linear.default, mixq.quantize_linear_requantize.default,
             mixq.quantize_linear_packed.default, mixq.quantize_linear_packed_requantize.default}  # fmt: skip

    def checked(node: torch.fx.Node) -> bool:
        readers = [u for u in node.users if u.target not in _SHAPE_ONLY]
        fused_x = [u for u in readers if u.target in fused and u.args[0] is node and node not in u.args[1:]]
        return bool(readers) and len(fused_x) == len(readers)

    return [i for i, node in enumerate(placeholders) if checked(node)]


#: ops that read only a tensor's shape (e.g. the number of nodes for an aggregation's output)
_SHAPE_ONLY = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_size.default, torch.ops.aten.sym_numel.default}
