"""The ``.pt2`` program files every backend writes its structure program to (and the torch backend its features).

``torch.export`` with every dim dynamic (node, edge and graph counts vary between calls), and the loaded program as
a no-grad callable returning a tuple.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor
from torch.export import Dim
from torch.export.graph_signature import InputKind, OutputKind

from .base import Runner


def _dynamic(inputs: tuple[Tensor, ...]) -> tuple[dict[int, object], ...]:
    """Every dim may vary, except size-1 dims (broadcast columns such as ``[E, 1]`` edge weights)."""
    return tuple({d: Dim.AUTO for d in range(t.dim()) if t.shape[d] != 1} for t in inputs)


def export_program(module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` with every dim dynamic (sizes of nodes, edges and graphs vary between calls)."""
    return torch.export.export(module, inputs, dynamic_shapes=_dynamic(inputs), strict=False)


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Write ``program`` without the example inputs it was exported on: ``torch.export.save`` stores them, and
    they are the graph itself (Cora's features: 16 MB in each of an artifact's two programs, beside 0.2 MB of
    8-bit weights; a million-node graph's, gigabytes). The artifact's self-check keeps its own copy of the
    examples, sparse where they are sparse. Clears ``program.example_inputs``.

    The archive is then deflated: ``torch.export.save`` stores every entry uncompressed, and the serialized graph
    (JSON) is most of a small program (a GCN's structure program: 128 kB of JSON, 13 kB deflated; 2-bit weights
    of Cora's GCN: 46 kB). ``torch.export.load`` reads deflated entries."""
    program.example_inputs = None
    torch.export.save(program, path)
    _deflate(Path(path))


def _deflate(path: Path) -> None:
    staged = path.with_name(path.name + ".deflating")
    with zipfile.ZipFile(path) as stored, zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as deflated:
        for entry in stored.infolist():
            deflated.writestr(entry.filename, stored.read(entry))
    os.replace(staged, path)


#: input signatures (shapes, dtypes) a loaded program remembers as validated: serving repeats a few graphs
VALIDATED_SIGNATURES = 16


def load_pt2(path: Path) -> Runner:
    """A ``.pt2`` program as a no-grad callable returning a tuple.

    ``torch.export``'s check of the inputs against the program's shape constraints (its symbolic dims' ranges and
    equalities) runs once per input signature, not on every call: it reads nothing but shapes, dtypes and devices,
    and it cost 0.32 ms of every 1.6 ms call of Cora's GCN feature program (Intel Xeon, 2 threads). Once a
    signature has passed, the program's own graph runs with its weights passed in (:func:`_lifted_graph`)."""
    program = torch.export.load(path)
    checked = program.module()
    unchecked = _lifted_graph(program)
    if unchecked is None:  # see _lifted_graph: the module's own call
        module = program.module()  # the same weight tensors as ``checked``; no flag flips between threads
        module.validate_inputs = False
        unchecked = lambda *inputs: tuple(module(*inputs))  # noqa: E731
    validated: OrderedDict[tuple, None] = OrderedDict()
    lock = threading.Lock()

    @torch.no_grad()
    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        signature = tuple((t.shape, t.dtype, t.device) if isinstance(t, Tensor) else t for t in inputs)
        with lock:
            known = signature in validated
            if known:
                validated.move_to_end(signature)
        if known:
            return unchecked(*inputs)
        outputs = tuple(checked(*inputs))
        with lock:  # reached only when the check passed
            validated[signature] = None
            if len(validated) > VALIDATED_SIGNATURES:
                validated.popitem(last=False)
        return outputs

    return run


def _lifted_graph(program: torch.export.ExportedProgram) -> Runner | None:
    """``program.graph_module`` called with the program's weights ahead of the inputs, or ``None`` where that is not
    the whole of what ``program.module()`` does: a functionalized program (its writes to buffers or inputs are
    outputs the module call writes back), weights elsewhere than ahead of the inputs, or an output that is not a
    flat tuple. (Writes left in place, as ``torch.export`` leaves them, reach the same tensors the module holds.)

    ``program.module()`` wraps the same graph in a module that flattens the inputs and unflattens the outputs
    through pytree specs and reads the weights as attributes: 35 us of every ~0.9 ms call of Cora's GCN feature
    program (Intel Xeon, 2 threads, in-process A/B); the graph itself takes the flat inputs as they come."""
    signature, state = program.graph_signature, program.state_dict
    if any(spec.kind != OutputKind.USER_OUTPUT for spec in signature.output_specs):
        return None
    out_spec = program.call_spec.out_spec
    if out_spec is None or out_spec.type is not tuple or any(not c.is_leaf() for c in out_spec.children()):
        return None
    kinds = [spec.kind for spec in signature.input_specs]
    users = kinds.count(InputKind.USER_INPUT)
    if InputKind.USER_INPUT in kinds[: len(kinds) - users]:
        return None
    weights = []
    for spec in signature.input_specs[: len(kinds) - users]:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in state:
            weights.append(state[spec.target])
        elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and spec.target in program.constants:
            weights.append(program.constants[spec.target])
        else:
            return None
    graph, weights = program.graph_module, tuple(weights)
    return lambda *inputs: tuple(graph(*weights, *inputs))


def no_grad_tuple(module) -> Runner:
    @torch.no_grad()
    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(module(*inputs))

    return run
