"""The input signature of a captured model: what every call is checked against, before any kernel runs.

A :class:`Signature` holds, per positional input, an :class:`InputSpec` (rank, dtype, which dims may vary), the
shape guards ``torch.export`` assumed while tracing (a Python branch on a size such as ``if x.shape[0] > 40`` is
specialised into the graph, so the graph is only right for sizes that satisfy it), and the value rules of graph
inputs (node ids in range, finite features). The quantized model, the integer program and every artifact check
their inputs against the same signature, so a call that the captured graph would answer wrongly (or that a
backend would answer with an out-of-bounds read) is refused with an error that names the input and the fix.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputSignatureError, InputValueError


@dataclass(frozen=True)
class InputSpec:
    """What one positional input looked like at capture: rank, dtype and which dims may vary."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    dynamic_dims: tuple[int, ...]

    def check(self, value: object) -> None:
        if not isinstance(value, Tensor):
            raise InputSignatureError(f"input '{self.name}' must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != len(self.shape):
            raise InputSignatureError(
                f"input '{self.name}' has rank {value.dim()} (shape {tuple(value.shape)}), but the model was "
                f"captured with rank {len(self.shape)} (shape {self.shape}); pass a tensor of the captured rank"
            )
        if value.dtype != self.dtype:
            raise InputSignatureError(
                f"input '{self.name}' has dtype {value.dtype}, but the model was captured with {self.dtype}"
            )
        for dim, (got, want) in enumerate(zip(value.shape, self.shape)):
            if dim not in self.dynamic_dims and got != want:
                raise InputSignatureError(
                    f"input '{self.name}' has size {got} in dim {dim}, but that dim is fixed at {want} in the captured "
                    f"graph (only dims {list(self.dynamic_dims)} may vary, e.g. the number of nodes or edges)"
                )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shape": list(self.shape),
            "dynamic_dims": list(self.dynamic_dims),
        }

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(data["name"], getattr(torch, data["dtype"]), tuple(data["shape"]), tuple(data["dynamic_dims"]))


# ---- shape guards --------------------------------------------------------------------------------------------

_EXPORT_SIZE = re.compile(r"L\[(?:'flat_args'\]\[(\d+)|'(\w+)')\]\.size\(\)\[(\d+)\]")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Mod: operator.mod, ast.Pow: operator.pow}  # fmt: skip
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}  # fmt: skip
Sizes = dict[str, tuple[int, ...]]


def guards_from_export(codes: Sequence[str], names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """torch.export's guard expressions (``L['x'].size()[0] > 40``, or ``L['flat_args'][0]...`` from strict
    export) rewritten over input names (``x.size(0) > 40``): (the ones we can evaluate, the ones we cannot)."""
    kept, dropped = [], []
    for code in codes:

        def rename(match: re.Match) -> str:
            position, name, dim = match.groups()
            return f"{names[int(position)] if position is not None else name}.size({dim})"

        text = _EXPORT_SIZE.sub(rename, code)
        try:
            compile_guard(text, names)
            kept.append(text)
        except (ValueError, SyntaxError, IndexError):
            dropped.append(code)
    return tuple(kept), tuple(dropped)


def compile_guard(text: str, names: Sequence[str]) -> Callable[[Sizes], object]:
    """A guard expression over ``name.size(d)``, integers and arithmetic/comparison/boolean operators, as a
    function of the input sizes. Anything else raises ``ValueError``: guards come from files, never ``eval``."""
    known = set(names)

    def build(node: ast.AST) -> Callable[[Sizes], object]:
        if isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            value = node.value
            return lambda sizes: value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "size":
            target, args = node.func.value, node.args
            if isinstance(target, ast.Name) and target.id in known and len(args) == 1 and not node.keywords:
                if isinstance(args[0], ast.Constant) and type(args[0].value) is int:
                    name, dim = target.id, args[0].value
                    return lambda sizes: sizes[name][dim]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda sizes: op(left(sizes), right(sizes))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            inner = build(node.operand)
            return (lambda sizes: -inner(sizes)) if isinstance(node.op, ast.USub) else (lambda s: not inner(s))
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda sizes: all(p(sizes) for p in parts)
            return lambda sizes: any(p(sizes) for p in parts)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            terms = [build(node.left), *(build(c) for c in node.comparators)]
            ops = [_COMPARE[type(op)] for op in node.ops]
            return lambda sizes: all(op(a(sizes), b(sizes)) for op, a, b in zip(ops, terms, terms[1:]))
        raise ValueError(f"unsupported construct {ast.dump(node)[:80]} in shape guard {text!r}")

    return build(ast.parse(text, mode="eval").body)


# ---- value rules ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexRule:
    """An integer input that indexes nodes (``edge_index``, ``batch``): its values must be ≥ 0 and, when
    ``bound`` names an input, below that input's number of rows (the number of nodes)."""

    input: str
    bound: str | None = None

    def check(self, values: Tensor, rows: int | None) -> None:
        if values.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(values))
        if low < 0:
            raise InputValueError(
                f"input '{self.input}' holds a negative node id ({low}); ids must lie in [0, number of nodes). "
                f"Negative ids would wrap around in some backends and read out of bounds in others"
            )
        if rows is not None and high >= rows:
            raise InputValueError(
                f"input '{self.input}' holds node id {high}, but '{self.bound}' has only {rows} rows (nodes); "
                f"every id must be < {rows}: pass the features of every node the edges refer to"
            )

    def to_dict(self) -> dict:
        return {"input": self.input, "bound": self.bound}


def all_finite(value: Tensor) -> bool:
    """Whether no element is NaN or infinite."""
    # A sum is ~30x cheaper than isfinite().all() and is NaN/Inf exactly when some element is, unless finite
    # values overflow; the full test then decides.
    return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())


def non_finite_error(what: str) -> InputValueError:
    """The error for NaN/Inf features, the same wherever they are caught (signature check or a kernel)."""
    return InputValueError(
        f"{what} contains NaN or infinite values; quantized programs cannot represent them "
        f"(clean the features, e.g. torch.nan_to_num)"
    )


def index_rules(specs: Sequence[InputSpec], examples: Sequence[Tensor]) -> tuple[IndexRule, ...]:
    """The node-id rules of a capture: every integer input that was non-negative in the example; an integer
    input shaped like ``edge_index`` (rank 2, fixed first dim 2) is also bounded by the rows of the first float
    input of rank 2 (the node features) when the example respected that bound."""
    features = next((s for s, t in zip(specs, examples) if t.is_floating_point() and t.dim() == 2), None)
    rules = []
    for spec, value in zip(specs, examples):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool or value.numel() == 0:
            continue
        if int(value.min()) < 0:
            continue  # not node ids
        bound = None
        pairs = value.dim() == 2 and 0 not in spec.dynamic_dims and value.shape[0] == 2
        if pairs and features is not None:
            rows = examples[specs.index(features)].shape[0]
            bound = features.name if int(value.max()) < rows else None
        rules.append(IndexRule(spec.name, bound))
    return tuple(rules)


# ---- the signature -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """Everything a call is checked against. ``guards``: shape conditions torch.export assumed at capture
    (``x.size(0) > 40``); ``index_rules``: node-id ranges; every floating input must be finite (NaN/Inf would
    give NaN in float but arbitrary codes after quantization, so every backend refuses them alike)."""

    inputs: tuple[InputSpec, ...]
    guards: tuple[str, ...] = ()
    index_rules: tuple[IndexRule, ...] = ()

    def __post_init__(self) -> None:
        names = [s.name for s in self.inputs]
        object.__setattr__(self, "_compiled", tuple((g, compile_guard(g, names)) for g in self.guards))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def check(self, args: tuple, what: str, finite_checked_later: Collection[str] = (), node_ids: bool = True) -> None:
        """Raise :class:`InputSignatureError` / :class:`InputValueError` unless ``args`` fit this signature.
        ``finite_checked_later``: inputs whose NaN/Inf test the program's own kernels make (with the same error)
        while they read them anyway, sparing a separate pass over, e.g., 15 MB of node features. ``node_ids=False``
        leaves out the node-id ranges (:meth:`check_node_ids`), for a caller that knows they were checked."""
        if len(args) != len(self.inputs):
            raise InputSignatureError(
                f"{what} takes {len(self.inputs)} inputs ({', '.join(self.names)}), got {len(args)}"
            )
        for spec, value in zip(self.inputs, args):
            spec.check(value)
        by_name = dict(zip(self.names, args))
        sizes = {name: tuple(value.shape) for name, value in by_name.items()}
        for text, guard in self._compiled:
            if not guard(sizes):
                raise InputSignatureError(
                    f"{what} was captured under the shape condition `{text}` (torch.export assumed it while "
                    f"tracing, e.g. from a Python branch on a size), and these inputs break it (sizes: "
                    f"{_describe(sizes, text)}); its answer would be wrong. Capture the model again with example "
                    f"inputs of these sizes, or remove the size-dependent branch from forward"
                )
        for name, value in by_name.items():
            if value.is_floating_point() and name not in finite_checked_later and not all_finite(value):
                raise non_finite_error(f"input '{name}'")
        if node_ids:
            self.check_node_ids(args)

    def check_node_ids(self, args: tuple) -> None:
        """Raise :class:`InputValueError` unless every node-id input lies in its range (``index_rules``)."""
        by_name = dict(zip(self.names, args))
        for rule in self.index_rules:
            rows = by_name[rule.bound].shape[0] if rule.bound is not None else None
            rule.check(by_name[rule.input], rows)

    def to_dict(self) -> dict:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "guards": list(self.guards),
            "index_rules": [r.to_dict() for r in self.index_rules],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        return cls(
            tuple(InputSpec.from_dict(d) for d in data["inputs"]),
            tuple(data.get("guards", ())),
            tuple(IndexRule(**r) for r in data.get("index_rules", ())),
        )


def _describe(sizes: Sizes, text: str) -> str:
    used = [name for name in sizes if re.search(rf"\b{re.escape(name)}\.size", text)]
    return ", ".join(f"{name}: {list(sizes[name])}" for name in used)
