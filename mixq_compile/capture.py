"""Capture an FP32 PyTorch Geometric model as an ATen-level ``torch.fx`` graph with ``torch.export``.

Plain ``torch.fx.symbolic_trace`` cannot enter ``MessagePassing.propagate`` (PyG checks ``isinstance(edge_index,
Tensor)``), so we export instead: the result shows the gather of ``x_j``, the message computation, the edge-weight
multiply and the scatter aggregation as separate ATen nodes, which is what quantizer insertion needs.

Exported graphs bake dropout and batch norm into the mode used at export and refuse ``.train()``. :func:`capture`
therefore returns a plain ``fx.GraphModule`` whose dropout and batch-norm nodes are rewritten into small modules that
read ``self.training`` (see :mod:`mixq_compile.passes.train_mode`), so the result trains like any module.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn
from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import free_symbols

from .errors import CaptureError
from .ir.signature import InputSpec, Signature, guards_from_export, index_rules

_FIXES = (
    "Usual fixes: (1) pass every graph-dependent size as a tensor shape instead of computing it from data "
    "(e.g. give pooling `size=` or pass the number of graphs as an input); (2) avoid Python control flow on tensor "
    "values inside forward; (3) avoid `.item()`, `.tolist()` and `int(tensor)` in forward; (4) make sure the example "
    "inputs are the tensors forward expects (x, edge_index[, batch]) in that order."
)


def _check_example_inputs(example_inputs: object) -> tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, Sequence) or not example_inputs:
        raise TypeError(
            "example_inputs must be a non-empty tuple of tensors, e.g. (x, edge_index) or (x, edge_index, batch)"
        )
    for i, value in enumerate(example_inputs):
        if not isinstance(value, Tensor):
            raise TypeError(f"example_inputs[{i}] is a {type(value).__name__}; only tensors are supported")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"example_inputs[{i}] contains NaN or infinite values; capture needs finite example data")
    return tuple(example_inputs)


# Argument names PyG uses for index tensors: a float tensor there is a mistake that export reports deep inside.
_INDEX_NAMES = ("edge_index", "batch", "ptr", "index", "edge_type", "node_type", "adj_t")


def _check_index_dtypes(model: nn.Module, args: tuple[Tensor, ...]) -> None:
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return
    for name, value in zip(names, args):
        if name in _INDEX_NAMES and (value.is_floating_point() or value.is_complex()):
            raise TypeError(
                f"example input '{name}' has dtype {value.dtype}, but node indices must be integers: pass "
                f"{name}.long() (PyG expects torch.long edge_index and batch tensors)"
            )


def _hint(args: tuple[Tensor, ...]) -> str:
    for i, value in enumerate(args):
        if value.is_floating_point() and value.dim() == 2 and value.shape[0] == 2:
            return (
                f"example_inputs[{i}] is a float tensor of shape [2, {value.shape[1]}]: if it is an edge_index, pass "
                f"it as integers (.long()). "
            )
    return ""


def _summarise(error: BaseException) -> str:
    """The first informative line of an export error, without the long trace export attaches."""
    text = str(error).strip()
    for pattern in (r"Could not (?:extract|guard)[^\n]*", r"Unsupported[^\n]*", r"data-dependent[^\n]*"):
        match = re.search(pattern, text)
        if match:
            return match.group(0)[:400]
    return (text.splitlines() or [type(error).__name__])[0][:400]


def _failing_location(error: BaseException) -> str:
    text = str(error)
    match = re.search(r"File: ([^\n]+?) in forward, code: ([^\n]+)", text) or re.search(
        r"\(([^()\n]+\.py:\d+) in [^\n)]+\)", text
    )
    if match:
        return " at " + " ".join(g.strip() for g in match.groups())
    return ""


def _export(model: nn.Module, args: tuple[Tensor, ...], dynamic_shapes: object, strict: bool):
    sink = io.StringIO()
    names = ("torch._dynamo", "torch.export", "torch._export", "torch.fx", "torch._subclasses")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=strict)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _auto_dynamic_shapes(args: tuple[Tensor, ...]) -> tuple[dict[int, object], ...]:
    # Dim.AUTO lets export keep a dim dynamic where the model allows it (nodes, edges, graphs) and specialise it
    # otherwise (feature widths, the 2 of edge_index) without raising.
    return tuple({d: Dim.AUTO for d in range(t.dim())} for t in args)


def _beyond_specs(guards: tuple[str, ...], specs: tuple[InputSpec, ...]) -> tuple[str, ...]:
    """The guards the specs do not already check (``x.size(1) == 1433`` on a fixed dim is one they do)."""
    fixed = {(s.name, d) for s in specs for d in range(len(s.shape)) if d not in s.dynamic_dims}
    kept = []
    for guard in guards:
        match = re.fullmatch(r"(\w+)\.size\((\d+)\) == \d+", guard)
        if match is None or (match.group(1), int(match.group(2))) not in fixed:
            kept.append(guard)
    return tuple(kept)


def _placeholder_names(gm: fx.GraphModule) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "placeholder"]


def _dynamic_dims(gm: fx.GraphModule) -> list[tuple[int, ...]]:
    dims = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", ())
        dims.append(tuple(i for i, s in enumerate(shape) if free_symbols(s)))
    return dims


def _strip_export_guards(gm: fx.GraphModule) -> None:
    """Remove export's shape-guard call: its guards are checked by the :class:`Signature`, with clearer messages."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")


def capture(
    model: nn.Module,
    example_inputs: Sequence[Tensor],
    *,
    dynamic_shapes: object | None = None,
    strict: bool | None = None,
) -> tuple[fx.GraphModule, Signature]:
    """Export ``model`` to an ATen-level ``fx.GraphModule`` with dynamic node/edge/graph counts.

    Tries non-strict export first and falls back to strict (Dynamo) export, which handles PyG's data-dependent
    pooling sizes (``int(batch.max()) + 1``). Raises :class:`CaptureError` naming the failing operation.

    Returns the graph module (plain ``fx.GraphModule``: dropout/batch norm not yet mode-aware) and the input
    :class:`~mixq_compile.ir.signature.Signature`: specs, the shape guards export assumed, node-id rules.
    """
    args = _check_example_inputs(example_inputs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_index_dtypes(model, args)
    shapes = dynamic_shapes if dynamic_shapes is not None else _auto_dynamic_shapes(args)
    was_training = model.training
    model.eval()
    attempts = [strict] if strict is not None else [False, True]
    errors: list[tuple[str, BaseException]] = []
    exported = None
    try:
        for mode in attempts:
            try:
                exported = _export(model, args, shapes, mode)
                break
            except Exception as error:
                errors.append(("strict" if mode else "non-strict", error))
    finally:
        model.train(was_training)
    if exported is None:
        details = "; ".join(f"{label} export: {_summarise(e)}{_failing_location(e)}" for label, e in errors)
        message = f"torch.export could not capture {type(model).__name__}. {details}. {_hint(args)}{_FIXES}"
        raise CaptureError(message) from errors[-1][1]
    unlifted = exported.module()
    gm = fx.GraphModule(unlifted, unlifted.graph, class_name=f"Captured{type(model).__name__}")
    _strip_export_guards(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    names = _placeholder_names(gm)
    specs = tuple(
        InputSpec(name=name, dtype=t.dtype, shape=tuple(t.shape), dynamic_dims=dims)
        for name, t, dims in zip(names, args, _dynamic_dims(gm))
    )
    # torch.export keeps its guards as Python source in a private attribute; without it only ranks, dtypes and
    # fixed dims are checked.
    guards, dropped = guards_from_export(getattr(exported, "_guards_code", ()), names)
    if dropped:
        warnings.warn(
            f"{type(model).__name__}: {len(dropped)} shape guard(s) of torch.export cannot be checked on inputs and "
            f"are not enforced: {list(dropped)[:3]}",
            stacklevel=3,
        )
    return gm, Signature(specs, _beyond_specs(guards, specs), index_rules(specs, args))
