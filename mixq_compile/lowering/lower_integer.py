"""Pass: lower a frozen fake-quant graph to an integer program.

Pre-condition: a graph from :func:`mixq_compile.freeze` — every ``mixq.<site>`` module is a calibrated
:class:`FakeQuantizer`. The graph is read with inference semantics (dropout is the identity, batch norm uses running
statistics, Degree-Quant protects nothing, see :func:`inference_graph`).

Post-condition: a new ``GraphModule`` over the instruction set of :mod:`mixq_compile.ir.instructions`, equal to the
fake-quant graph within one step of each output grid:

- a quantizer on a float value becomes ``quantize`` (codes in int8/int16 containers); on an accumulator or on codes
  of another grid it becomes ``requantize`` with ``M = s_in / s_out``;
- weights are quantized once, at lowering: int8/int16 codes stored transposed with their row sums, so
  ``linear`` becomes ``linear_int`` (int32 accumulation, zero-point folded out, bias as int32 on scale ``s_x s_w``);
- messages: gathers and reshapes move codes; a product of two quantized values (edge weight times message) is the
  exact ``(q_e - z_e)(q_x - z_x)`` in int32 (not the reference's ``q_e (q_x - z_x - z_e)`` shortcut, which is only
  right when ``z_e = 0``, MIXQ_METHOD.md §4); sum aggregation is an int32 scatter/index add; max/min aggregation
  selects on int32 values;
- ReLU on codes clamps at the zero-point;
- any other op that reads a quantized value gets it dequantized and runs in float (a *float island*, listed in
  ``gm.meta["mixq_float_ops"]``); outputs are dequantized.

Every value is tracked in one of three domains: float, :class:`Grid` (codes) or :class:`Acc` (int32 accumulator).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ..errors import MixQError
from ..graph_copy import quiet_deepcopy
from ..ir import instructions as K
from ..ir.meta import FLOAT_OPS_KEY, QUANTIZER_ROOT, SITES_KEY, WEIGHT_SITE_KEY
from ..ir.modes import ModeBatchNorm, ModeDropout
from ..ir.rules import MOVEMENT_OPS, SHAPE_ONLY_OPS
from ..passes.inference_graph import inference_graph
from ..quant.mixed import MixedQuantizer
from ..quant.quantizer import FakeQuantizer

aten = torch.ops.aten


class LoweringError(MixQError):
    """The frozen graph cannot be lowered to an integer program."""


@dataclass(frozen=True, eq=False)
class Grid:
    """Integer codes: ``real = scale * (code - zero)``; ``scale``/``zero`` broadcast against the value."""

    site: str
    scale: Tensor
    zero: Tensor
    qmin: int
    qmax: int
    bits: int

    @property
    def per_tensor(self) -> bool:
        return self.scale.numel() == 1

    def same_as(self, other: Grid) -> bool:
        return (
            (self.qmin, self.qmax) == (other.qmin, other.qmax)
            and torch.equal(self.scale, other.scale)
            and torch.equal(self.zero, other.zero)
        )


@dataclass(frozen=True, eq=False)
class Acc:
    """An int32 accumulator: ``real = scale * acc`` (``scale`` broadcasts over the last dim). ``scale=None`` marks
    exact zeros (the target of an aggregation), which adopt the scale of whatever is added into them."""

    scale: Tensor | None
    size: object = None  # for zeros: the shape argument of the original new_zeros/zeros


Domain = Grid | Acc | None

#: ops that read an operand only for its shape: quantized operands are passed as they are.
_SHAPE_ONLY_ARGS = {aten.expand_as.default: (1,), aten.sym_size.int: (0,), aten.sym_numel.default: (0,)}
_ZERO_MAKERS = {aten.new_zeros.default: 1, aten.zeros.default: 0}
_SUM_SCATTERS = {aten.scatter_add.default, aten.scatter_add_.default}
_SUM_INDEX_ADDS = {aten.index_add.default, aten.index_add_.default}
_REDUCE_SCATTERS = {aten.scatter_reduce.two, aten.scatter_reduce_.two}
_MULS = {aten.mul.Tensor, aten.mul_.Tensor}
_ADDS = {aten.add.Tensor, aten.add_.Tensor}
_LAYOUT_CHANGING = {aten.permute.default, aten.transpose.int, aten.t.default}


class _Lowering:
    def __init__(self, gm: fx.GraphModule, fixed_point: bool) -> None:
        self.source = gm
        self.fixed_point = fixed_point
        self.graph = fx.Graph()
        self.graph._codegen = quiet_deepcopy(gm.graph._codegen)  # keep the captured input/output pytree signature
        self.root = nn.Module()
        self.env: dict[fx.Node, tuple[fx.Node | None, Domain]] = {}
        self.constants: dict[fx.Node, Tensor] = {}  # lowered get_attr node -> its tensor (weights, folded codes)
        self.float_ops: list[str] = []
        self.sites: dict[str, dict] = {}
        self._count = 0
        self._consts: dict[int, tuple[Tensor, fx.Node]] = {}

    # -- helpers -------------------------------------------------------------------------------------------------
    def const(self, value: Tensor, hint: str) -> fx.Node:
        """A ``get_attr`` node holding ``value``; the same tensor object (a grid's scale, zero...) is stored once."""
        held = self._consts.get(id(value))
        if held is not None and held[0] is value:
            return held[1]
        self._count += 1
        name = f"{hint}_{self._count}".replace(".", "_")
        self.root.register_buffer(name, value.detach().clone().contiguous())
        node = self.graph.get_attr(name)
        self.constants[node] = self.root.get_buffer(name)
        self._consts[id(value)] = (value, node)
        return node

    def call(self, fn: Callable, *args) -> fx.Node:
        return self.graph.call_function(fn, tuple(args))

    def grid_of(self, quantizer: FakeQuantizer, site: str, like: fx.Node) -> Grid:
        if isinstance(quantizer, MixedQuantizer):
            raise LoweringError(
                f"site {site!r} still has a mixed quantizer: lower a frozen model (mixq_compile.freeze(qmodel))"
            )
        if not bool(quantizer.initialized):
            raise LoweringError(f"site {site!r} was never calibrated: run the model once before exporting")
        spec = quantizer.spec
        val = like.meta.get("val")
        ndim = val.dim() if isinstance(val, Tensor) else 1
        scale = quantizer.scale.detach().abs().clamp_min(1e-8).float()
        zero = quantizer.zero_point.detach().round().clamp(spec.qmin, spec.qmax)
        if spec.symmetric:
            zero = torch.zeros_like(zero)
        if spec.granularity == "channel":
            shape = [1] * ndim
            shape[spec.axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        else:
            scale, zero = scale.reshape(()), zero.reshape(())
        shift = K.grid_shift(spec.qmin, spec.qmax)
        return Grid(site, scale, (zero + shift).to(torch.int32), spec.qmin + shift, spec.qmax + shift, spec.bits)

    def as_float(self, node: fx.Node | None, domain: Domain) -> fx.Node:
        if isinstance(domain, Grid):
            return self.call(K.dequantize, node, self.const(domain.scale, "scale"), self.const(domain.zero, "zero"))
        if isinstance(domain, Acc):
            if domain.scale is None:
                return self.graph.call_function(aten.zeros.default, (domain.size,))
            return self.call(K.dequantize_acc, node, self.const(domain.scale, "scale"))
        return node

    def as_acc(self, node: fx.Node, domain: Grid | Acc) -> tuple[fx.Node, Acc]:
        if isinstance(domain, Acc):
            return node, domain
        return self.call(K.center, node, self.const(domain.zero, "zero")), Acc(domain.scale)

    def float_arg(self, arg):
        return fx.node.map_arg(arg, lambda n: self.as_float(*self.env[n]))

    # -- per-node rules ------------------------------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        for node in self.source.graph.nodes:
            handler = getattr(self, f"on_{node.op}")
            self.env[node] = handler(node)
        gm = fx.GraphModule(self.root, self.graph)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        for name in [n for n, _ in gm.named_buffers() if n not in used]:
            delattr(gm, name)
        gm.meta[FLOAT_OPS_KEY] = tuple(dict.fromkeys(self.float_ops))
        gm.meta[SITES_KEY] = self.sites
        return gm

    def on_placeholder(self, node: fx.Node):
        new = self.graph.placeholder(node.name)
        new.meta = dict(node.meta)
        return new, None

    def on_get_attr(self, node: fx.Node):
        value = operator.attrgetter(node.target)(self.source)
        if not isinstance(value, Tensor):
            raise LoweringError(f"unsupported attribute {node.target!r} of type {type(value).__name__}")
        return self.const(value, node.target), None

    def on_output(self, node: fx.Node):
        out = self.graph.output(self.float_arg(node.args[0]))
        return out, None

    def on_call_module(self, node: fx.Node):
        module = self.source.get_submodule(node.target)
        if node.target.startswith(QUANTIZER_ROOT + "."):
            return self.quantize_site(node, module)
        if isinstance(module, ModeDropout):
            return self.env[node.args[0]]
        if isinstance(module, ModeBatchNorm):
            self.float_ops.append(f"{node.name} (batch_norm)")
            name = node.target.replace(".", "_")
            self.root.add_module(name, module.eval())
            return self.graph.call_module(name, self.float_arg(node.args)), None
        raise LoweringError(f"unsupported module call {node.target!r} ({type(module).__name__}) in the frozen graph")

    def quantize_site(self, node: fx.Node, quantizer: FakeQuantizer):
        site = node.meta.get("mixq_site", node.target)
        grid = self.grid_of(quantizer, site, node)
        source, domain = self.env[node.args[0]]
        self.sites[site] = {"bits": grid.bits, "per_tensor": grid.per_tensor}
        if source in self.constants and domain is None:  # a weight: quantize once, now
            codes = quantizer.codes(self.constants[source]).round() + (grid.qmin - quantizer.spec.qmin)
            return self.const(codes.to(K.container_dtype(grid.qmin, grid.qmax)), f"codes_{site}"), grid
        if domain is None:
            scale, zero = self.const(grid.scale, "scale"), self.const(grid.zero, "zero")
            return self.call(K.quantize, source, scale, zero, grid.qmin, grid.qmax), grid
        if isinstance(domain, Grid) and domain.same_as(grid):
            return source, grid
        acc, acc_domain = self.as_acc(source, domain)
        if acc_domain.scale is None:
            raise LoweringError(f"site {site!r} quantizes an all-zero tensor")
        multiplier = acc_domain.scale.double() / grid.scale.double()
        zero = self.const(grid.zero, "zero")
        if self.fixed_point:
            mantissa, shift = fixed_point_multiplier(multiplier)
            mantissa, shift = self.const(mantissa, "mantissa"), self.const(shift, "shift")
            return self.call(K.requantize_fixed_point, acc, mantissa, shift, zero, grid.qmin, grid.qmax), grid
        return self.call(K.requantize, acc, self.const(multiplier.float(), "multiplier"), zero,
                         grid.qmin, grid.qmax), grid  # fmt: skip

    def on_call_function(self, node: fx.Node):
        target = node.target
        domains = [self.env[a][1] for a in node.all_input_nodes]
        if not any(isinstance(d, Grid | Acc) for d in domains):
            lowered = [self.env[n][0] for n in node.all_input_nodes]
            if lowered and all(n in self.constants for n in lowered):  # constant folding (e.g. quantized biases)
                fetch = lambda n: self.constants[self.env[n][0]]  # noqa: E731
                value = node.target(*fx.node.map_arg(node.args, fetch), **fx.node.map_arg(node.kwargs, fetch))
                if isinstance(value, Tensor):
                    return self.const(value, node.name), None
            return self.copy_node(node, self.float_arg), None
        rule = self.integer_rule(node)
        if rule is not None:
            return rule
        self.float_ops.append(f"{node.name} ({_op_name(target)})")
        return self.copy_node(node, self.float_arg), None

    def copy_node(self, node: fx.Node, map_args) -> fx.Node:
        new = self.graph.call_function(node.target, map_args(node.args), map_args(node.kwargs))
        new.meta = dict(node.meta)
        return new

    def lowered(self, arg) -> tuple[fx.Node | None, Domain]:
        return self.env[arg] if isinstance(arg, fx.Node) else (arg, None)

    def integer_rule(self, node: fx.Node):
        """The integer translation of ``node`` (an op reading quantized values), or ``None`` for a float island."""
        target, args = node.target, node.args
        if target in _ZERO_MAKERS:
            size = fx.node.map_arg(args[_ZERO_MAKERS[target]], lambda n: self.env[n][0])
            return None, Acc(None, size)
        if target in SHAPE_ONLY_OPS:  # new_ones(x_j, [E]) reads x_j's dtype only: never dequantize [E, C] for it
            return self.shape_only(node)
        if target in _SHAPE_ONLY_ARGS:
            keep = _SHAPE_ONLY_ARGS[target]
            mapped = [self.lowered(a)[0] if i in keep else self.float_arg(a) for i, a in enumerate(args)]
            return self.graph.call_function(target, tuple(mapped), dict(node.kwargs)), None
        if target == aten.linear.default:
            return self.linear(node)
        if target in MOVEMENT_OPS or target in (aten.dropout.default, aten.feature_dropout.default):
            return self.movement(node)
        if target in (aten.relu.default, aten.relu_.default):
            value, domain = self.lowered(args[0])
            if isinstance(domain, Grid):
                return self.call(K.relu_codes, value, self.const(domain.zero, "zero")), domain
            if domain.scale is not None:
                return self.graph.call_function(aten.relu.default, (value,)), domain
        if target in _MULS and len(node.all_input_nodes) == 2:
            return self.product(node)
        if target in _ADDS and len(args) == 2 and node.kwargs.get("alpha", 1) == 1:
            return self.sum(node)
        if target in _SUM_SCATTERS | _SUM_INDEX_ADDS | _REDUCE_SCATTERS:
            return self.aggregate(node)
        return None

    def shape_only(self, node: fx.Node):
        """A constructor that takes only shape, dtype and device from its input (``new_ones``, ``zeros_like``, …):
        applied to the codes with the original float dtype, so the input is not dequantized."""
        codes, _ = self.lowered(node.args[0])
        rest = fx.node.map_arg(node.args[1:], lambda n: self.env[n][0])
        kwargs = {**node.kwargs, "dtype": node.meta["val"].dtype}
        new = self.graph.call_function(node.target, (codes, *rest), kwargs)
        new.meta = dict(node.meta)
        return new, None

    def linear(self, node: fx.Node):
        x, w = (self.lowered(a) for a in node.args[:2])
        bias = node.args[2] if len(node.args) > 2 else None
        if not (isinstance(x[1], Grid) and x[1].per_tensor and isinstance(w[1], Grid) and w[0] in self.constants):
            return None
        x_grid, w_grid = x[1], w[1]
        codes = self.constants[w[0]].to(torch.int32) - w_grid.zero.reshape(-1, 1).to(torch.int32)
        fits_int8 = bool(codes.min() >= -128 and codes.max() <= 127)
        if not fits_int8 and w_grid.bits <= 8:
            raise LoweringError(f"weight site {w_grid.site!r} has codes outside int8 after centering")
        w_dtype = torch.int8 if fits_int8 else torch.int32
        acc_scale = (x_grid.scale * w_grid.scale.reshape(-1)).float()
        w_t = self.const(codes.t().contiguous().to(w_dtype), f"wt_{w_grid.site}")
        w_sum = self.const(codes.sum(dim=1).to(torch.int32), f"wsum_{w_grid.site}")
        bias_node = None
        if bias is not None:
            b_value, b_domain = self.lowered(bias)
            if b_domain is not None or b_value not in self.constants:
                return None
            bias_int = torch.round(self.constants[b_value].float() / acc_scale).to(torch.int32)
            bias_node = self.const(bias_int, f"bias_{w_grid.site}")
        zero = self.const(x_grid.zero, "zero")
        product = self.call(K.linear_int, x[0], zero, w_t, w_sum, bias_node)
        product.meta[WEIGHT_SITE_KEY] = w_grid.site
        return product, Acc(acc_scale)

    def movement(self, node: fx.Node):
        value, domain = self.lowered(node.args[0])
        if node.target in (aten.dropout.default, aten.feature_dropout.default):
            return value, domain
        other_quantized = [a for a in node.all_input_nodes[1:] if self.env[a][1] is not None]
        if other_quantized or domain is None:
            return None
        if isinstance(domain, Acc) and domain.scale is None:
            return None
        scale = domain.scale
        if scale.numel() > 1:  # per-channel: only ops that keep the channel (last) dim in place
            before, after = node.args[0].meta.get("val"), node.meta.get("val")
            if (
                node.target in _LAYOUT_CHANGING
                or before is None
                or after is None
                or before.shape[-1] != after.shape[-1]
            ):
                return None
        mapped = fx.node.map_arg(node.args[1:], lambda n: self.env[n][0])
        new = self.graph.call_function(
            node.target, (value, *mapped), fx.node.map_arg(node.kwargs, lambda n: self.env[n][0])
        )
        return new, domain

    def product(self, node: fx.Node):
        (a, da), (b, db) = (self.lowered(x) for x in node.args)
        if not (isinstance(da, Grid | Acc) and isinstance(db, Grid | Acc)):
            return None
        (a, da), (b, db) = self.as_acc(a, da), self.as_acc(b, db)
        if da.scale is None or db.scale is None or (da.scale.numel() > 1 and db.scale.numel() > 1):
            return None
        return self.call(K.mul_int, a, b), Acc((da.scale * db.scale).float())

    def sum(self, node: fx.Node):
        (a, da), (b, db) = (self.lowered(x) for x in node.args)
        if not (isinstance(da, Grid | Acc) and isinstance(db, Grid | Acc)):
            return None
        (a, da), (b, db) = self.as_acc(a, da), self.as_acc(b, db)
        if da.scale is None or db.scale is None or not torch.equal(da.scale, db.scale):
            return None
        return self.call(K.add_int, a, b), da

    def aggregate(self, node: fx.Node):
        target = node.target
        base, dim, index, src = node.args[:4]
        _, base_domain = self.lowered(base)
        src_node, src_domain = self.lowered(src)
        if not (isinstance(base_domain, Acc) and base_domain.scale is None and isinstance(src_domain, Grid | Acc)):
            return None
        if self.env[index][1] is not None:
            return None
        acc, acc_domain = self.as_acc(src_node, src_domain)
        if acc_domain.scale is None:
            return None
        idx = self.env[index][0]
        if target in _SUM_SCATTERS:
            return self.call(K.scatter_sum_int, acc, dim, idx, base_domain.size), acc_domain
        if target in _SUM_INDEX_ADDS:
            return self.call(K.index_sum_int, acc, dim, idx, base_domain.size), acc_domain
        reduce = node.args[4]
        include_self = node.kwargs.get("include_self", node.args[5] if len(node.args) > 5 else True)
        if reduce == "sum":
            return self.call(K.scatter_sum_int, acc, dim, idx, base_domain.size), acc_domain
        if reduce in ("amax", "amin") and not include_self:
            return self.call(K.scatter_select_int, acc, dim, idx, base_domain.size, reduce), acc_domain
        return None


def _op_name(target) -> str:
    return getattr(target, "__name__", str(target)) if target is not operator.getitem else "getitem"


def fixed_point_multiplier(multiplier: Tensor) -> tuple[Tensor, Tensor]:
    """``M ≈ mantissa * 2**-shift`` with a 31-bit mantissa in ``[2**30, 2**31)`` (int64 tensors, per channel)."""
    if (multiplier <= 0).any() or (multiplier >= 2**30).any():
        raise LoweringError("a requantisation multiplier is outside (0, 2**30); use the float multiplier instead")
    exponent = torch.floor(torch.log2(multiplier))
    shift = (30 - exponent).to(torch.int64)
    mantissa = torch.round(multiplier * torch.pow(2.0, shift.double())).to(torch.int64)
    overflow = mantissa >= 2**31  # rounding up to 2**31: halve once more
    return torch.where(overflow, mantissa // 2, mantissa), torch.where(overflow, shift - 1, shift)


def lower_integer(gm: fx.GraphModule, *, fixed_point: bool = False) -> fx.GraphModule:
    """Lower a frozen fake-quant graph to an integer program (see module docstring).

    ``fixed_point=True`` requantizes with an integer mantissa and shift (round half up) instead of a float
    multiplier, for targets without floating point; results may then differ from the fake-quant model by one step
    where the float product falls on a rounding tie.
    """
    with torch.no_grad():
        return _Lowering(inference_graph(gm), fixed_point).run()
