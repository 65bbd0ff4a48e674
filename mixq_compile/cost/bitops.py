"""BitOPs under two documented conventions, plus average bit-width and model size.

``"wa"`` (default; the HAWQ/BOPs convention): sum over multiply-accumulates of ``b_a * b_b``, the bit-widths of the
two operands (the grid each operand lies on; an unquantized operand counts 32 bits). Dense ops: ``N*F_in*F_out``
MACs. Weighted messages ``w_ij * x_j`` aggregated by sum: ``numel(message)`` MACs of ``b_w * b_x``. Unweighted
aggregation and pooling: ``numel(source)`` accumulations of ``b_x``. FP32: every width is 32.

``"paper"`` (reproduces the MixQ logs exactly, MIXQ_METHOD.md §3.3–3.4): each quantizable op contributes its
operation count (:mod:`.ops` rules) times the mean bit-width of the quantizers created for it (its own input,
weight and output quantizers; edge-weight quantizers never enter), and message passing is counted on the *input*
edges as ``2*|E|*F`` — without the self-loops a layer adds, as the reference's estimator did. FP32 is
``32 *`` the count of every feature computation, self-loops, edge-weight products and ReLUs included.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import fx, nn

from ..ir.plan import OpRecord, SitePlan
from ..passes.find_sites import feature_nodes
from .ops import NodeShapes, dense_macs, node_ops, raw_edge_count, source_numel, source_shape

Convention = Literal["wa", "paper"]
CONVENTIONS = ("wa", "paper")
FP32_BITS = 32


@dataclass(frozen=True)
class OpCost:
    node: str
    category: str
    ops: int
    bits: tuple[float, ...]
    bitops: float


@dataclass(frozen=True)
class BitOpsReport:
    """Cost of one model on one input under one convention."""

    convention: str
    bitops: float
    avg_bits: float
    model_bytes: float
    per_op: tuple[OpCost, ...]

    @property
    def gbitops(self) -> float:
        return self.bitops / 1e9

    def __str__(self) -> str:
        lines = [f"{'op':<28}{'category':<17}{'ops':>14}  {'bits':<16}{'BitOPs':>18}"]
        for c in self.per_op:
            bits = ",".join(f"{b:g}" for b in c.bits)
            lines.append(f"{c.node:<28}{c.category:<17}{c.ops:>14,}  {bits:<16}{c.bitops:>18,.1f}")
        lines.append(
            f"total ({self.convention}): {self.bitops:,.1f} BitOPs = {self.gbitops:.4f} G; "
            f"average bits {self.avg_bits:.2f}; model {self.model_bytes:,.0f} bytes"
        )
        return "\n".join(lines)


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown BitOPs convention {convention!r}; use one of {CONVENTIONS}")
    return convention


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _op_nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def op_cost(
    op: OpRecord,
    node: fx.Node,
    shapes: NodeShapes,
    bits: Mapping[str, float],
    plan: SitePlan,
    convention: str,
    edges: int | None,
) -> OpCost:
    """Cost of one quantizable op; ``bits`` maps site name to bit-width (a tensor of expected bits works too)."""

    def width(site: str | None) -> float:
        return bits[site] if site is not None else FP32_BITS

    if convention == "paper":
        kinds = {s.name: s.kind for s in plan.sites}
        owned = [width(s) for s in op.owned if kinds[s] != "edge_weight"]
        if op.category == "dense":
            count = dense_macs(node, shapes)
        elif op.category == "message_passing" and edges is not None:
            src = source_shape(node, shapes)
            count = 2 * edges * (src[-1] if len(src) > 1 else 1)
        else:
            count = 2 * source_numel(node, shapes)
        return OpCost(op.node, op.category, count, tuple(owned), count * _mean(owned))
    if op.category == "dense":
        count = dense_macs(node, shapes)
        a, b = (list(op.operand_grids) + [None, None])[:2]
        widths = (width(a), width(b))
        return OpCost(op.node, op.category, count, widths, count * widths[0] * widths[1])
    count = source_numel(node, shapes)
    x_bits = width(op.operand_grids[0] if op.operand_grids else None)
    if op.edge_weight is not None:
        widths = (x_bits, width(op.edge_weight))
        return OpCost(op.node, op.category, count, widths, count * widths[0] * widths[1])
    return OpCost(op.node, op.category, count, (x_bits,), count * x_bits)


def quantized_bitops(
    gm: fx.GraphModule, plan: SitePlan, shapes: NodeShapes, bits: Mapping[str, float], convention: str
) -> tuple[OpCost, ...]:
    nodes = _op_nodes(gm)
    edges = raw_edge_count(gm, shapes)
    return tuple(op_cost(op, nodes[op.node], shapes, bits, plan, convention, edges) for op in plan.ops)


def assignment_bitops(qmodel, bits: Mapping[str, float], convention: str) -> float:
    """BitOPs of a quantized model with each site at ``bits[site]``, on the shapes recorded from its example inputs."""
    costs = quantized_bitops(qmodel.graph_module, qmodel.plan, qmodel.example_shapes, bits, convention)
    return float(sum(c.bitops for c in costs))


def fp32_bitops(gm: fx.GraphModule, plan: SitePlan, shapes: NodeShapes, convention: str) -> tuple[OpCost, ...]:
    """FP32 cost of the same graph: every width 32 (``wa``), or 32 x every feature op count (``paper``)."""
    if convention == "wa":
        return quantized_bitops(gm, plan, shapes, defaultdict(lambda: FP32_BITS), "wa")
    features = feature_nodes(gm)
    costs = []
    for node in gm.graph.nodes:
        count = node_ops(node, shapes) if node in features else 0
        if count:
            costs.append(OpCost(node.name, "fp32", count, (FP32_BITS,), count * FP32_BITS))
    return tuple(costs)


def model_bytes(module: nn.Module, weight_bits: Mapping[str, int] | None = None) -> float:
    """Bytes of all parameters: quantized weights at their bit-width, everything else at 32 bits.

    Quantizer parameters (scales, zero-points, logits) are not counted: they are metadata of the quantized tensors.
    """
    weight_bits = dict(weight_bits or {})
    total = 0.0
    for name, p in module.named_parameters():
        if ".mixq." in f".{name}" or name.startswith("mixq."):
            continue
        short = name.removeprefix("graph_module.")
        bits = weight_bits.get(short, FP32_BITS)
        total += p.numel() * bits / 8
    return total


def as_report(convention: str, costs: tuple[OpCost, ...], avg_bits: float, size: float) -> BitOpsReport:
    return BitOpsReport(convention, float(sum(c.bitops for c in costs)), avg_bits, size, costs)
