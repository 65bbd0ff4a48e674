"""Operation counts of a captured graph on concrete inputs.

Counting rules follow the counter the MixQ paper used (torch-operation-counter 0.3.4/0.3.5, MIXQ_METHOD.md §3.3):
dense matmul ``N * F_in * F_out`` (bias not counted); scatter/index aggregation ``numel(src) + numel(index)``
= ``2 * numel(src)``; element-wise binary arithmetic ``numel(first operand)``; ReLU ``2 * numel``; movement,
gathers, allocation and everything else 0. Only computations on features count: work that depends on graph
structure alone (degrees, GCN normalisation) can be cached per graph and is excluded, as the reference's cached
normalisation was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx

from ..ir.rules import rule_for

aten = torch.ops.aten

_ELEMENTWISE = frozenset(
    {
        aten.mul.Tensor,
        aten.mul_.Tensor,
        aten.add.Tensor,
        aten.add_.Tensor,
        aten.sub.Tensor,
        aten.sub_.Tensor,
        aten.div.Tensor,
        aten.div_.Tensor,
    }
)
_RELU = frozenset({aten.relu.default, aten.relu_.default})


@dataclass(frozen=True)
class NodeShapes:
    """Concrete shapes of every node's inputs and output from one run of the graph."""

    outputs: dict[str, tuple[int, ...]]

    def of(self, node: object) -> tuple[int, ...]:
        return self.outputs.get(getattr(node, "name", ""), ())


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.shapes[n.name] = tuple(result.shape)
        return result


def record_shapes(gm: fx.GraphModule, example_inputs: Sequence[Tensor]) -> NodeShapes:
    """Run ``gm`` once (eval mode, no grad) and record every tensor node's shape."""
    was_training = gm.training
    gm.eval()
    try:
        recorder = _ShapeRecorder(gm)
        with torch.no_grad():
            recorder.run(*example_inputs)
    finally:
        gm.train(was_training)
    return NodeShapes(recorder.shapes)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def dense_macs(node: fx.Node, shapes: NodeShapes) -> int:
    """Multiply-accumulates of a dense op: ``numel(output) * K`` with K the reduction length."""
    rule = rule_for(node.target)
    first = node.args[rule.operands[0]]
    k = shapes.of(first)[-1] if shapes.of(first) else 0
    return _numel(shapes.of(node)) * k


def source_shape(node: fx.Node, shapes: NodeShapes) -> tuple[int, ...]:
    """Shape of an aggregation's source (message or pooled tensor)."""
    return shapes.of(node.args[rule_for(node.target).operands[0]])


def source_numel(node: fx.Node, shapes: NodeShapes) -> int:
    return _numel(source_shape(node, shapes))


def node_ops(node: fx.Node, shapes: NodeShapes) -> int:
    """Operation count of one node under the reference counting rules (see module docstring)."""
    if node.op != "call_function":
        return 0
    rule = rule_for(node.target)
    if rule is not None and rule.category == "dense":
        return dense_macs(node, shapes)
    if rule is not None and rule.category == "aggregation":
        return 2 * source_numel(node, shapes)
    if node.target in _ELEMENTWISE:
        first = node.args[0]
        return _numel(shapes.of(first)) if isinstance(first, fx.Node) else _numel(shapes.of(node))
    if node.target in _RELU:
        return 2 * _numel(shapes.of(node))
    return 0


def raw_edge_count(gm: fx.GraphModule, shapes: NodeShapes) -> int | None:
    """Columns of the single ``[2, E]`` integer input (edge_index), if there is exactly one."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        shape = shapes.of(node)
        if isinstance(val, Tensor) and not val.is_floating_point() and len(shape) == 2 and shape[0] == 2:
            found.append(shape[1])
    return found[0] if len(found) == 1 else None
