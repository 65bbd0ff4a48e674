"""Pass: classify graph values into quantization points (sites) from the declarative rules in :mod:`.rules`.

Pre-condition: an ATen-level graph from :func:`mixq_compile.capture.capture`.
Post-condition: ``gm.meta["mixq_plan"]`` holds a :class:`SitePlan`; the graph itself is unchanged.

How values are classified, in graph order:
- every operand of a dense op (linear / mm / matmul / bmm / addmm) is a ``weight`` when it is computed from
  parameters only, an ``input`` when it comes from a model input, else an ``activation``; its output is
  ``linear_out``;
- every aggregation (scatter / index_add / segment reduce) whose source depends on features is either message
  passing (its source is built from rows gathered along edges, x_j) or pooling (it is not). In a message
  ``w_ij * x_j`` the per-edge factor is an ``edge_weight`` and x_j a ``message``; sum/mean results are
  ``aggregate`` or ``pool`` (a sum divided by a structure-only count is quantized after the division, as the
  mean: see ``_SiteFinder.mean_of``); max/min results stay on their input's grid;
- a value already on a quantizer's grid (through movement ops, ReLU, dropout, max) gets no second quantizer, and a
  requested quantizer is placed before movement ops (before the gather of x_j, on the node features themselves);
- aggregations over graph structure only (degrees, normalisation) are not quantized: they are not features;
- finally, sites whose codes no integer work would read (only float ops or the outputs read them) are dropped
  again, unless ``QuantConfig.quantize_unread_sites`` (see ``_SiteFinder.drop_unread_sites``).
Feature computations that match no rule stay in float and are listed in ``SitePlan.float_ops``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from ..config import QuantConfig
from ..errors import NoQuantizableOpError
from ..ir.meta import PLAN_KEY
from ..ir.modes import ModeDropout
from ..ir.plan import OpRecord, Site, SitePlan
from ..ir.rules import (
    GATHER_INDEX_ARG,
    GATHER_OPS,
    GRID_PRESERVING_OPS,
    INDEX_BROADCAST_OPS,
    MESSAGE_SCALE_OPS,
    MOVEMENT_OPS,
    NON_COMPUTE_OPS,
    NON_NEGATIVE_OPS,
    SELECTING_REDUCTIONS,
    SHAPE_ONLY_OPS,
    rule_for,
)
from ..quant.spec import QuantSpec

aten = torch.ops.aten
_TRANSPOSING = frozenset({aten.t.default, aten.transpose.int})
_DIVISIONS = frozenset({aten.div.Tensor, aten.div.Scalar})
_OUTPUT_KINDS = frozenset({"linear_out", "aggregate", "pool"})  # sites on op outputs: read by later ops only


def _reads_only_shape(user: fx.Node, value: fx.Node) -> bool:
    """``user`` reads only the shape of ``value`` (``other.expand_as(value)``)."""
    return user.op == "call_function" and user.target == aten.expand_as.default and user.args[0] is not value


def _val(node: object):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _is_float(node: object) -> bool:
    val = _val(node)
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _shape(node: fx.Node) -> tuple[int | str, ...]:
    val = _val(node)
    return tuple(int(s) if isinstance(s, int) else str(s) for s in getattr(val, "shape", ()))


def _first_input(node: fx.Node) -> fx.Node | None:
    if node.args and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Inputs that are tensors: sizes (SymInts) read from a feature tensor do not make a value a feature."""
    return [i for i in node.all_input_nodes if isinstance(_val(i), torch.Tensor)]


def _index_key(node: object) -> object:
    """An index's identity up to broadcasting: ``batch`` and ``batch.view(-1, 1).expand_as(x)`` are one index, and so
    are two ``edge_index[1]`` selects of one edge index (``edge_index[0]`` is another)."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in INDEX_BROADCAST_OPS:
        node = node.args[0]
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target in (aten.select.int, aten.slice.Tensor):
        return (node.target, _index_key(node.args[0]), *node.args[1:])
    return node


def _gather_index(node: fx.Node) -> object:
    index = node.args[GATHER_INDEX_ARG[node.target]]
    if isinstance(index, (list, tuple)):
        index = next((i for i in index if i is not None), None)
    return _index_key(index)


def feature_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Tensor values that depend on a float model input or a float parameter (not on graph structure alone, nor on
    a feature's shape alone: the ones a mean aggregation counts with are structure)."""
    feature: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if not isinstance(_val(node), torch.Tensor):
            continue
        if node.op in ("placeholder", "get_attr"):
            if _is_float(node):
                feature.add(node)
        elif node.target not in SHAPE_ONLY_OPS and any(i in feature for i in _tensor_inputs(node)):
            feature.add(node)
    return feature


def _inside_message_passing(node: fx.Node) -> bool:
    """Whether the node was traced inside a PyG ``MessagePassing`` layer (the paper scales such terms twice)."""
    from torch_geometric.nn.conv import MessagePassing

    for _, owner in (node.meta.get("nn_module_stack") or {}).values():
        if isinstance(owner, type) and issubclass(owner, MessagePassing):
            return True
        if isinstance(owner, str) and _resolves_to_message_passing(owner, MessagePassing):
            return True
    return False


def _resolves_to_message_passing(qualified: str, base: type) -> bool:
    import importlib

    module_name, _, attr = qualified.rpartition(".")
    try:
        owner = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(owner, type) and issubclass(owner, base)


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = path.replace("L['self'].", "").replace("L['self']", "")
    path = path.replace("._modules['", ".").replace("']", "").strip(".")
    return path.removesuffix(".aggr_module")


class _SiteFinder:
    def __init__(self, gm: fx.GraphModule, config: QuantConfig) -> None:
        self.gm = gm
        self.config = config
        self.params = {name for name, _ in gm.named_parameters()} | {name for name, _ in gm.named_buffers()}
        self.feature: set[fx.Node] = set()  # values that depend on node features or parameters
        self.param_only: set[fx.Node] = set()  # values computed from parameters alone
        self.grid: dict[fx.Node, str] = {}  # value -> site whose grid it lies on
        self.sites: list[Site] = []
        self.site_at: dict[fx.Node, str] = {}
        self.ops: list[OpRecord] = []
        self.names: set[str] = set()
        self.handled: set[fx.Node] = set()  # message products computed exactly by the integer aggregation
        self.reads: list[tuple[fx.Node, fx.Node]] = []  # (op, value whose grid it reads) for each quantized operand

    # -- dataflow facts ---------------------------------------------------------------------------------------
    def classify_values(self) -> None:
        self.feature = feature_nodes(self.gm)
        for node in self.gm.graph.nodes:
            inputs = _tensor_inputs(node)
            if node.op == "get_attr" and _is_float(node):
                self.param_only.add(node)
            elif node.op in ("call_function", "call_module") and inputs and all(i in self.param_only for i in inputs):
                self.param_only.add(node)

    def origin(self, node: fx.Node) -> tuple[fx.Node, bool, bool]:
        """Walk back through movement ops; return (root, passed a transpose, passed another reshaping op)."""
        transposed = reshaped = False
        while node.op == "call_function" and node.target in MOVEMENT_OPS and _first_input(node) is not None:
            if node.target in _TRANSPOSING:
                transposed = not transposed
            elif node.target not in (aten.clone.default, aten.contiguous.default, aten.alias.default):
                reshaped = True
            node = _first_input(node)
        return node, transposed, reshaped

    def keeps_grid(self, node: fx.Node) -> bool:
        if node.op == "call_function":
            return node.target in MOVEMENT_OPS or node.target in GRID_PRESERVING_OPS
        if node.op == "call_module":
            return isinstance(self.gm.get_submodule(node.target), ModeDropout)
        return False

    def grid_holder(self, node: fx.Node) -> fx.Node | None:
        """The value ``node`` inherits its grid from (itself, or an ancestor through grid-keeping ops), if any."""
        while node not in self.grid:
            parent = _first_input(node)
            if parent is None or not self.keeps_grid(node):
                return None
            node = parent
        return node

    def on_grid(self, node: fx.Node) -> str | None:
        holder = self.grid_holder(node)
        return None if holder is None else self.grid[holder]

    def is_gathered(self, node: fx.Node, scatter_index: object = None) -> bool:
        """Whether ``node`` is rows gathered from other nodes for an aggregation along ``scatter_index``.

        A gather along the aggregation's own index is not: it sends values back to the members they were reduced
        from (GraphNorm's ``mean[batch]``, a softmax's per-node maximum), it moves nothing between nodes.
        """
        while node.op == "call_function" and node.target in MOVEMENT_OPS:
            if node.target in GATHER_OPS:
                return scatter_index is None or _gather_index(node) != scatter_index
            node = _first_input(node)
            if node is None:
                return False
        return False

    # -- site creation ----------------------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def spec_for(self, kind: str, node: fx.Node, weight_axis: int | None) -> QuantSpec:
        spec = self.config.spec_for(kind)
        if kind == "weight":
            if spec.granularity != "channel":
                return spec
            # A weight reached through a reshape has no known output-channel axis: fall back to one scale.
            return replace(spec, granularity="tensor") if weight_axis is None else replace(spec, axis=weight_axis)
        non_negative = node.op == "call_function" and node.target in NON_NEGATIVE_OPS
        if self.config.unsigned_after_relu and spec.signed and non_negative:
            return replace(spec, signed=False)
        return spec

    def request(
        self, value: fx.Node, kind: str, owner: fx.Node, weight_axis: int | None = None
    ) -> tuple[str | None, bool]:
        """Make sure ``value`` is quantized; return (site whose grid it lies on, whether the site is new).

        ``owner`` is the op the site serves: the site is named after its layer (the consuming layer for operands).
        """
        path = _module_path(owner)
        if not path and kind in ("pool_input", "pool"):
            path = "readout"  # a graph-level pooling called in the model's own forward belongs to no layer
        holder = self.grid_holder(value)
        if holder is not None:
            self.reads.append((owner, holder))
            return self.grid[holder], False
        root, transposed, reshaped = self.origin(value)
        if root in self.site_at:
            self.reads.append((owner, root))
            return self.site_at[root], False
        if kind == "weight":
            rank = len(_shape(root))
            if reshaped or rank == 0:
                weight_axis = None
            elif weight_axis is not None:
                axis = weight_axis % max(rank, 1)
                weight_axis = (rank - 1 - axis) if (transposed and rank == 2) else axis
        if kind == "activation" and root.op == "placeholder":
            kind = "input"
        role = {"linear_out": "output", "activation": "input"}.get(kind, kind)
        base = str(root.target) if root.op == "get_attr" else (f"{path}.{role}" if path else f"{root.name}.{role}")
        name = self.unique_name(base)
        if kind not in self.config.kinds or self.config.skipped(name):
            return None, False
        site = Site(
            name=name,
            kind=kind,
            node=root.name,
            shape=_shape(root),
            spec=self.spec_for(kind, root, weight_axis),
            candidates=self.config.candidates_for(name),
            in_message_passing=_inside_message_passing(owner),
        )
        self.sites.append(site)
        self.site_at[root] = name
        self.grid[root] = name
        if kind not in _OUTPUT_KINDS:
            self.reads.append((owner, root))
        return name, True

    # -- per-op handling --------------------------------------------------------------------------------------
    def visit_dense(self, node: fx.Node, operands: tuple[int, ...], weight_axis: int) -> None:
        owned, grids = [], []
        for index in operands:
            value = node.args[index]
            if not isinstance(value, fx.Node) or not _is_float(value):
                continue
            if value in self.param_only:
                kind, axis = "weight", weight_axis
            else:
                kind, axis = "activation", None
            site, new = self.request(value, kind, node, axis)
            grids.append(site)
            if new:
                owned.append(site)
        out, new = self.request(node, "linear_out", node)
        if new:
            owned.append(out)
        output = out if new else None
        self.ops.append(OpRecord(node.name, str(node.target), "dense", None, tuple(owned), tuple(grids), output=output))

    def visit_aggregation(self, node: fx.Node, src: fx.Node, reduce: str, index: object) -> None:
        message, edge_weight = self.split_message(src, index)
        owned, grids = [], []
        ew_site = None
        if message is None:  # pooling: a graph-level readout
            category, in_kind, out_kind = "pooling", "pool_input", "pool"
            operand = src
        else:
            category, in_kind, out_kind = "message_passing", "message", "aggregate"
            operand = message
            if edge_weight is not None:
                ew_site, new = self.request(edge_weight, "edge_weight", node)
                self.handled.add(src)
                if new:
                    owned.append(ew_site)
        site, new = self.request(operand, in_kind, node)
        grids.append(site)
        if new:
            owned.append(site)
        if ew_site is not None:
            grids.append(ew_site)
        out = None
        if reduce in SELECTING_REDUCTIONS:
            if site is not None:
                self.grid[node] = site
        else:
            out, new = self.request(self.mean_of(node), out_kind, node)
            if new:
                owned.append(out)
            else:
                out = None
        self.ops.append(
            OpRecord(node.name, str(node.target), category, reduce, tuple(owned), tuple(grids), ew_site, out)
        )

    def mean_of(self, total: fx.Node) -> fx.Node:
        """The value an aggregation's output quantizer belongs on: the mean, when the sum ``total`` is only divided
        by a structure-only count (PyG's mean aggregation is ``sum / count.clamp(min=1)``), else ``total``.

        A sum grows with the in-degree and a mean does not: quantizing the sum fits its grid to the degrees of
        the calibration graphs. Trained on sampled neighbourhoods (≤ 10 in-edges) and run on the whole graph, the
        hubs' sums were clipped (GraphSAGE on 100k nodes: whole-graph accuracy 95.9 % instead of FP32's 97.0 %), and
        re-ranging the sums on the whole graph left the typical node a few levels (93.3 %). The integer program
        divides the dequantized sum in float either way, so the quantizer after the division costs nothing and
        rounds once where there were two roundings (the sum's, then the mean's as the next layer's input).
        """
        divisions = [u for u in total.users if not _reads_only_shape(u, total)]
        if len(divisions) != 1:
            return total
        (division,) = divisions
        if division.op != "call_function" or division.target not in _DIVISIONS or division.args[0] is not total:
            return total
        divisor = division.args[1]
        while isinstance(divisor, fx.Node) and divisor.op == "call_function" and divisor.target in INDEX_BROADCAST_OPS:
            divisor = divisor.args[0]  # count.view(-1, 1).expand_as(total): the count, broadcast to the sum's shape
        if isinstance(divisor, fx.Node) and (divisor in self.feature or divisor in self.param_only):
            return total
        return division

    def split_message(self, src: fx.Node, index: object) -> tuple[fx.Node | None, fx.Node | None]:
        """(x_j-side operand, per-edge factor) of a message aggregated along ``index`` (see :meth:`is_gathered`),
        or (None, None) when ``src`` is not a message."""
        node = src
        while node.op == "call_function" and node.target in MOVEMENT_OPS and node.target not in GATHER_OPS:
            parent = _first_input(node)
            if parent is None:
                break
            node = parent
        if self.is_gathered(node, index):
            return src, None
        if node.op == "call_function" and node.target in MESSAGE_SCALE_OPS:
            a, b = node.args[0], node.args[1]
            for gathered, factor in ((a, b), (b, a)):
                if isinstance(gathered, fx.Node) and self.is_gathered(gathered, index):
                    weight = factor if isinstance(factor, fx.Node) and _is_float(factor) else None
                    return gathered, weight
        if any(self.is_gathered(i, index) for i in _ancestors_since_aggregation(node)):
            return src, None  # a custom message computed from gathered rows: quantize the message itself
        return None, None

    def run(self) -> SitePlan:
        self.classify_values()
        unmatched = []
        for node in self.gm.graph.nodes:
            if node.op != "call_function":
                continue
            rule = rule_for(node.target)
            if rule is not None and rule.category == "dense" and node in self.feature:
                self.visit_dense(node, rule.operands, rule.weight_axis)
            elif rule is not None and rule.category == "aggregation":
                src = node.args[rule.operands[0]]
                if isinstance(src, fx.Node) and src in self.feature and _is_float(src):
                    reduce = rule.reduce or str(node.args[rule.reduce_arg])
                    index = None if rule.index_arg is None else _index_key(node.args[rule.index_arg])
                    self.visit_aggregation(node, src, reduce, index)
            elif node in self.feature and node not in self.param_only and not self.keeps_grid(node):
                unmatched.append(node)
        if not self.config.quantize_unread_sites:
            self.drop_unread_sites()
        float_ops = tuple(
            f"{n.name} ({n.target})" for n in unmatched if n not in self.handled and n.target not in NON_COMPUTE_OPS
        )
        return SitePlan(tuple(self.sites), tuple(self.ops), float_ops)

    def drop_unread_sites(self) -> None:
        """Remove the sites whose codes no integer work reads, leaving their values in float.

        A site's codes are worth having when an op computes on them: a dense op or a sum/mean aggregation (int32
        accumulation), or a max/min aggregation whose result is itself read that way. The rest only reach float
        ops or the model's outputs: an aggregation whose bias is added in float before the next layer quantizes its
        input again (rounded twice), the last layer's output (dequantized exactly from its int32 accumulator
        instead), the maximum a softmax subtracts for stability (any shift gives the same softmax; rounded, it can
        fall below the largest score, and the exponentials then leave the [0, 1] range their grid was calibrated
        on: GAT on held-out graphs). Rounding those buys no integer work and only adds error: 8-bit PTQ of a
        two-layer ``GCNConv`` on a held-out graph 0.0235 -> 0.0156 relative L2.
        """
        selecting = {op.node for op in self.ops if op.reduce in SELECTING_REDUCTIONS}
        readers_of: dict[str, list[str]] = {}
        for owner, value in self.reads:
            readers_of.setdefault(value.name, []).append(owner.name)

        def computes(op: str, seen: frozenset[str] = frozenset()) -> bool:
            if op not in selecting:
                return True
            return any(computes(r, seen | {op}) for r in readers_of.get(op, ()) if r not in seen)

        read = {self.grid[value] for owner, value in self.reads if computes(owner.name)}
        unread = {s.name for s in self.sites if s.name not in read}
        if not unread:
            return
        self.sites = [s for s in self.sites if s.name not in unread]
        keep = lambda site: None if site in unread else site  # noqa: E731
        self.ops = [
            replace(
                op,
                owned=tuple(s for s in op.owned if s not in unread),
                operand_grids=tuple(map(keep, op.operand_grids)),
                edge_weight=keep(op.edge_weight),
                output=keep(op.output),
            )
            for op in self.ops
        ]


def _ancestors_since_aggregation(node: fx.Node, limit: int = 64) -> list[fx.Node]:
    """Ancestors of ``node`` back to the previous aggregations (bounded breadth-first walk), used to recognise custom
    messages built from x_j. The walk does not pass an aggregation (nor start from one: EdgeConv's max is pooled
    as it is): what was gathered before it was already reduced to nodes, so a readout after message passing is
    pooling, not a message."""
    seen, frontier, out = set(), [] if _is_aggregation(node) else [node], []
    while frontier and len(out) < limit:
        current = frontier.pop(0)
        for parent in current.all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                out.append(parent)
                if not _is_aggregation(parent):
                    frontier.append(parent)
    return out


def _is_aggregation(node: fx.Node) -> bool:
    rule = rule_for(node.target) if node.op == "call_function" else None
    return rule is not None and rule.category == "aggregation"


def find_sites(gm: fx.GraphModule, config: QuantConfig) -> fx.GraphModule:
    """Attach a :class:`SitePlan` to ``gm.meta``. Raises :class:`NoQuantizableOpError` when nothing matches."""
    plan = _SiteFinder(gm, config).run()
    if not plan.sites:
        raise NoQuantizableOpError(
            "the model has no quantizable operation: no linear/matmul and no feature aggregation was found in the "
            f"captured graph (ops left in float: {', '.join(plan.float_ops[:10]) or 'none'}). mixq_compile quantizes "
            "dense layers and message passing; check that the model computes on its inputs, or widen "
            "QuantConfig.kinds if you restricted it"
        )
    gm.meta[PLAN_KEY] = plan
    return gm
