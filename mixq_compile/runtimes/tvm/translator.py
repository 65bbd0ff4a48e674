"""Translate a feature program (``torch.fx`` over the integer instruction set and ATen) into a Relax module.

One converter per instruction of :data:`mixq_compile.ir.instructions.INSTRUCTIONS` and per ATen op that feature
programs contain (the table of :mod:`.converters`, passed in). Node and edge counts are symbolic (``tirx.Var``), so
one build serves every graph. The hot spots do not go through Relax's generic ops: ``linear_int`` on int8 codes
becomes the VNNI kernel, FP32 ``linear`` with a constant weight the register-blocked FP32 kernel, and every sum
aggregation of gathered messages (:class:`Aggregation`) a CSR kernel over edges that the structure program sorts by
target (:mod:`mixq_compile.runtimes.tvm.kernels`). Everything else is legalized by Relax, fused, and given a generic
parallel/vectorized schedule (:class:`CpuSpatial`).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import tvm
from torch import Tensor, fx
from tvm import relax, tirx

from ...errors import MixQError
from ...lowering.csr_aggregation import Aggregation
from ..converter_table import Converters

aten = torch.ops.aten


class UnsupportedOpError(MixQError, NotImplementedError):
    """A feature program uses an op the TVM converter has no translation for."""


def unsupported(node: fx.Node, why: str) -> UnsupportedOpError:
    op = getattr(node.target, "__name__", str(node.target))
    return UnsupportedOpError(
        f"the TVM backend cannot translate {node.name} ({op}): {why}. Export with backend='torch' (or 'onnx'), or "
        f"add a converter for it to mixq_compile.runtimes.tvm.converters.CONVERTERS"
    )


# -- the converter -------------------------------------------------------------------------------------------------
Shape = list  # of int | tirx.PrimExpr
#: fx call target -> ``convert(converter, node)``
ConverterMap = dict[object, Callable[["Converter", fx.Node], object]]


@dataclass(frozen=True)
class Param:
    """A Relax function parameter: name, dtype and shape (ints and ``tirx.Var`` for dynamic sizes)."""

    name: str
    dtype: str
    shape: Shape


class Converter:
    """Walks the feature graph once, emitting Relax bindings through a ``BlockBuilder``."""

    def __init__(
        self,
        gm: fx.GraphModule,
        aggregations: list[Aggregation],
        use_vnni: bool,
        converters: Converters,
        sparse_inputs: frozenset[fx.Node] = frozenset(),
        packed: bool = True,
    ) -> None:
        self.gm = gm
        self.converters = converters
        self.bb = relax.BlockBuilder()
        self.env: dict[fx.Node, object] = {}
        self.aggregations = {a.node: a for a in aggregations}
        self.use_vnni = use_vnni
        self.sparse_inputs = sparse_inputs  # fused input layers whose features are sparse (the sparse kernel)
        self.params: list[relax.Var] = []
        self.packed = packed  # 2- and 4-bit codes read packed: input-layer weights, large aggregation tables
        self.csr_used = 0  # aggregations that did get the CSR kernel
        self.narrow_used = 0  # of those, the ones over 2- or 4-bit codes (csr_aggregate_narrow)
        self.sparse_used = 0  # input layers that did get the sparse kernel
        self.packed_weights = 0  # of those, the ones whose 2- or 4-bit weights are stored and read packed
        self.kernels: dict[str, tirx.PrimFunc] = {}  # symbol -> hand-written kernel (see call_kernel)
        self.finite_checked: set[fx.Node] = set()  # graph inputs that kernels test for NaN/Inf
        self.finite_flags: list[relax.Var] = []  # their flags, returned after the outputs

    # -- values ---------------------------------------------------------------------------------------------------
    def value(self, arg: object) -> object:
        return fx.node.map_aggregate(arg, lambda a: self.env[a] if isinstance(a, fx.Node) else a)

    def tensor(self, arg: object, dtype: str | None = None) -> relax.Expr:
        """``arg`` as a Relax tensor expression (constants become ``relax.const``), optionally cast."""
        value = self.value(arg)
        if isinstance(value, Tensor):
            value = relax.const(value.detach().cpu().numpy())
        elif isinstance(value, bool | int | float):
            value = relax.const(value, dtype or ("float32" if isinstance(value, float) else "int64"))
        if dtype is not None and dtype_of(value) != dtype:
            value = self.emit(relax.op.astype(value, dtype))
        return value

    def array(self, arg: object) -> np.ndarray | None:
        """A constant operand as numpy (``None`` when it is computed at run time)."""
        value = self.value(arg)
        return value.detach().cpu().numpy() if isinstance(value, Tensor) else None

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr)

    def call_kernel(
        self,
        func: tirx.PrimFunc,
        hint: str,
        args: list,
        shape: Shape,
        dtype: str,
        checks: fx.Node | None = None,
        scratch: tuple[Shape, str] | None = None,
    ) -> relax.Var:
        """Call a hand-written kernel. Kernels are compiled apart from the Relax module (:meth:`kernel_module`) and
        called by symbol: built inside ``relax.build`` the same TIR ran up to 1.5x slower (Cora's sparse input
        layer: 2.8 ms there, 1.85 ms built by ``tvm.compile`` on its own, same target and source). The symbol
        carries a hash of the kernel's source, so artifacts loaded side by side never resolve each other's
        kernels to a different body.

        ``checks``: the graph input the kernel tests for NaN/Inf; its second output, a 1-element int32 flag, is then
        returned after the program's outputs (:attr:`finite_flags`) for the runner to raise on. ``scratch``:
        (shape, dtype) of a second output the kernel uses as working memory, dropped after the call."""
        digest = hashlib.sha1(func.script().encode()).hexdigest()[:12]
        name = f"mixq_{hint}_{digest}"
        self.kernels.setdefault(name, func.with_attr("global_symbol", name))
        out = relax.TensorType(shape, dtype)
        second = relax.TensorType([1], "int32") if checks is not None else None
        if scratch is not None:
            second = relax.TensorType(*scratch)
        if second is None:
            return self.emit(relax.call_dps_packed(relax.ExternFunc(name), args, out))
        both = self.emit(relax.call_dps_packed(relax.ExternFunc(name), args, [out, second]))
        if checks is not None:
            self.finite_checked.add(checks)
            self.finite_flags.append(self.emit(relax.TupleGetItem(both, 1)))
        return self.emit(relax.TupleGetItem(both, 0))

    def kernel_module(self) -> tvm.IRModule | None:
        """The kernels :meth:`call_kernel` called, as one TIR module (``None`` if none was)."""
        return tvm.IRModule(dict(self.kernels)) if self.kernels else None

    # -- driver ---------------------------------------------------------------------------------------------------
    def build(self, params: list[Param]) -> tvm.IRModule:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.params = [relax.Var(p.name, relax.TensorType(p.shape, p.dtype)) for p in params]
        for node, var in zip(placeholders, self.params):
            self.env[node] = var
        with self.bb.function("main", self.params):
            with self.bb.dataflow():
                for node in self.gm.graph.nodes:
                    if node.op == "get_attr":
                        self.env[node] = operator.attrgetter(node.target)(self.gm)
                    elif node.op in ("call_function", "call_module"):
                        self.env[node] = self.convert(node)
                    elif node.op == "output":
                        outputs = [self.tensor(a) for a in node.args[0]]
                        result = self.bb.emit_output(relax.Tuple(outputs + self.finite_flags))
                    elif node.op != "placeholder":
                        raise unsupported(node, f"{node.op} nodes are not supported")
            self.bb.emit_func_output(result)
        return self.bb.get()

    def convert(self, node: fx.Node) -> object:
        return _converter(self.gm, node, self.converters)(self, node)


def _converter(gm: fx.GraphModule, node: fx.Node, converters: Converters) -> Callable[[Converter, fx.Node], object]:
    converter = converters.lookup(gm, node)
    if converter is None:
        raise unsupported(node, f"no converter for this {node.op.replace('_', ' ')}")
    return converter


def check_supported(gm: fx.GraphModule, converters: Converters) -> None:
    """Fail fast, before the slow structure export and build, naming *every* op without a converter (the first
    one alone can hide the op the user needs to know about)."""
    missing: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_module", "call_method"):
            try:
                _converter(gm, node, converters)
            except UnsupportedOpError:
                missing.setdefault(getattr(node.target, "__name__", str(node.target)), []).append(node.name)
    if missing:
        listed = "; ".join(f"{op} (at {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                           for op, names in missing.items())  # fmt: skip
        raise UnsupportedOpError(
            f"the TVM backend has no converter for {len(missing)} op(s) of this feature program: {listed}. Export "
            f"with backend='torch' (or 'onnx'), or add converters to mixq_compile.runtimes.tvm.converters.CONVERTERS"
        )


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def shape_of(expr: relax.Expr) -> Shape:
    return list(expr.ty.shape.values)


def normal_axis(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim
