"""The ``onnx`` backend: the integer program as two ONNX graphs, run with onnxruntime (CPU).

The fx programs are translated node by node (:mod:`mixq_compile.runtimes.onnx.graph`), one converter per instruction
of :mod:`mixq_compile.ir.instructions` and per ATen op of structure and feature programs
(:mod:`mixq_compile.runtimes.onnx.converters`). The graphs use ONNX's own integer ops,
chosen for what is exact *and* fast on onnxruntime's CPU kernels (TOOLCHAIN_NOTES.md §Q3, §Q7):

- codes of ≤ 8-bit grids travel as ``uint8`` holding ``code + 128``: ``QuantizeLinear``/``DequantizeLinear`` read and
  write them directly, and ``MatMulInteger`` takes them with the x zero-point as ``a_zero_point``. ORT's fast
  integer GEMM wants uint8 activations times int8 weights (the int8 x int8 path is ~10x slower);
- weights whose codes fit 2 or 4 bits are ``INT2``/``INT4`` initializers (packed, so model bytes follow the
  bit-width) cast to int8 once; ORT folds the cast when the session starts;
- sum aggregation over rows is a *sorted segment sum*: messages are ordered by target row, prefix-summed with
  ``CumSum`` and differenced at segment ends. In int32 this is exact (two's complement wrap-around cancels), and
  it is several times faster than ``ScatterElements(reduction="add")``; float messages are prefix-summed in
  float64. (``ScatterND(reduction="add")`` is faster still but loses updates on duplicate indices in ORT 1.32 when
  it runs multi-threaded, so it is not used.) Aggregations of gathered node rows (``H[src] * w`` summed by
  ``dst``) get their edges sorted by target in the structure program first, as for the torch backend's CSR
  kernels (:mod:`mixq_compile.lowering.csr_aggregation`), so the messages are gathered in row order: one
  ``[E, C]`` gather, no permutation of the messages, no select at the segment bounds
  (:func:`.scatter.csr_row_sum`). Other scatters use ``ScatterElements``;
- topology-only work in the feature graph (edge sorting, segment bounds, index expansion) is *hoisted* into the
  structure graph, so ``load_artifact(..., cache_structure=True)`` computes it once per graph.

Codes handed between the two graphs and returned to the caller use the reference dtypes, so each runner returns
what the PyTorch executor returns; the structure runner appends the hoisted tensors after the frontier.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from torch import Tensor

from ...ir.program import IntegerProgram
from ...ir.signature import all_finite, non_finite_error
from ...lowering.csr_aggregation import csr_features, find_aggregations, sorted_structure
from ..base import Backend, Runner
from . import matmul as onnx_matmul
from .converters import CONVERTERS
from .graph import ONNX_TYPES, OPSET, TORCH_TYPES, OnnxGraph, value_info

STRUCTURE_FILE = "structure.onnx"
FEATURES_FILE = "features.onnx"
#: the feature graph's trailing outputs that the runner reads for NaN/Inf in an input (:func:`_finite_sums`)
FINITE_SUM_PREFIX = "mixq_finite_sum_"
#: onnxruntime session settings: exact int4 paths (no MatMulNBits with int8 activations), no QDQ fusions (they
#: turn ``DequantizeLinear``s -> ``Add`` -> ``QuantizeLinear`` into ``QLinearAdd``, whose fixed-point rounding is
#: one code off the integer program now and then: GraphSAGE's ``lin_l + lin_r``), and worker threads that
#: busy-wait between the ops of a run but stop when it returns: without spinning every op waits for a worker to
#: wake (Cora GCN, 2 threads: 6.2 ms per call, interleaved with PyTorch work), spinning past the run steals the CPU
#: from whatever runs between two calls (8.2 ms, and 4x slower PyTorch work after it); both together: 4.9 ms and
#: PyTorch work as fast as alone.
SESSION_CONFIG = {
    "session.qdq_matmulnbits_accuracy_level": "0",
    "session.disable_quant_qdq": "1",
    "session.intra_op.allow_spinning": "1",
    "session.force_spinning_stop": "1",
}


# ----------------------------------------------------------------------------------------------------------------
# graph passes: dead code, hoisting topology work into the structure graph
# ----------------------------------------------------------------------------------------------------------------
def _remove_dead(g: OnnxGraph, also_keep: Sequence[str] = ()) -> None:
    """Drop nodes and initializers that neither the outputs nor ``also_keep`` need (converters leave unused
    helpers, e.g. the expanded index of a scatter that became a segment sum)."""
    needed = {v.name for v in g.outputs} | set(also_keep)
    kept = []
    for node in reversed(g.nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    g.nodes = kept[::-1]
    g.keep_initializers(needed)


#: ops whose output has the shape of their first input: ``Shape`` of their output is ``Shape`` of that input.
_SHAPE_PRESERVING = {"QuantizeLinear", "DequantizeLinear", "Cast", "Clip", "Relu", "LeakyRelu", "Sigmoid", "Identity"}
#: binary ops that keep the shape of their first input when the second is a scalar constant.
_SCALAR_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min"}


def _keeps_shape(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type in _SHAPE_PRESERVING:
        return True
    if node.op_type in _SCALAR_BINARY and node.input[1] in initializers:
        dims = initializers[node.input[1]].dims
        return len(dims) <= 1 and math.prod(dims) == 1
    return False


def _hoist(structure: OnnxGraph, features: OnnxGraph, topology_inputs: set[str], model_inputs: set[str]) -> list[str]:
    """Move feature-graph nodes that depend only on topology (integer inputs, frontier, input *shapes*) into the
    structure graph, so a cached structure run does them once. Returns the values handed over (new outputs of the
    structure graph, new inputs of the feature graph, in order).

    ``Shape`` of a value computed elementwise from an input reads that input instead (e.g. the node count from
    the quantized features). Nodes that read only initializers stay (ORT folds them; moving them would turn
    weights into inputs), but are copied along when a hoisted node reads them.
    """
    constant = set(features.initializers)
    topology = set(topology_inputs)
    same_shape: dict[str, str] = {}
    hoisted, copied = [], []
    for node in features.nodes:
        inputs = [name for name in node.input if name]
        if _keeps_shape(node, features.initializers):
            same_shape[node.output[0]] = same_shape.get(inputs[0], inputs[0])
        if node.op_type == "Shape" and same_shape.get(inputs[0], inputs[0]) in model_inputs | topology:
            node.input[0] = same_shape.get(inputs[0], inputs[0])
            topology.update(node.output)
            hoisted.append(node)
        elif all(n in constant for n in inputs):
            constant.update(node.output)
            copied.append(node)
        elif all(n in topology or n in constant for n in inputs):
            topology.update(node.output)
            hoisted.append(node)
    if not hoisted:
        return []
    moved = {id(n) for n in hoisted}
    remaining = [n for n in features.nodes if id(n) not in moved]
    read_later = {name for n in remaining for name in n.input} | {v.name for v in features.outputs}
    handed = [name for n in hoisted for name in n.output if name in read_later]
    needed = {name for n in hoisted for name in n.input}
    copies = []
    for node in reversed(copied):
        if any(o in needed for o in node.output):
            copies.append(node)
            needed.update(node.input)
    structure.nodes += copies[::-1] + hoisted
    structure.initializers.update({k: v for k, v in features.initializers.items() if k in needed})
    features.nodes = remaining
    return handed


def _to_value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    """Type of a handed-over or output tensor from an example run: its dtype and rank, every dim symbolic."""
    return value_info(name, TORCH_TYPES[array.dtype], array.shape)


def _session(model: onnx.ModelProto | str | Path, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _finish(graph: OnnxGraph, extra_outputs: Sequence[str], extra_dtypes: dict[str, torch.dtype],
            feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[np.ndarray]]:  # fmt: skip
    """The checked model of ``graph`` with typed outputs, and its outputs on ``feeds`` (one example run, which
    also gives the outputs' ranks: ``onnx.checker`` wants a shape on every graph output)."""
    model = graph.model()
    del model.graph.output[:]
    names = [v.name for v in graph.outputs] + list(extra_outputs)
    dtypes = [v.dtype for v in graph.outputs] + [extra_dtypes[n] for n in extra_outputs]
    model.graph.output.extend(helper.make_tensor_value_info(n, ONNX_TYPES[d], None) for n, d in zip(names, dtypes))
    results = _session(model, threads=1).run(names, feeds)
    del model.graph.output[:]
    model.graph.output.extend(_to_value_info(n, r) for n, r in zip(names, results))
    onnx.checker.check_model(model)
    return model, results


def convert_program(program: IntegerProgram, example_inputs: Sequence[Tensor]) -> tuple[onnx.ModelProto,
                                                                                        onnx.ModelProto]:  # fmt: skip
    """The structure and feature ONNX models of ``program`` (see module docstring)."""
    example_inputs = tuple(t.detach().cpu() for t in example_inputs)
    frontier = tuple(t.detach().cpu() for t in program.structure(*example_inputs))
    aggregations = find_aggregations(program.features, len(example_inputs), frontier)
    structure_fx = sorted_structure(program.structure, aggregations)
    features_fx = csr_features(program.features, aggregations)
    frontier = tuple(t.detach().cpu() for t in structure_fx(*example_inputs))
    structure = OnnxGraph(structure_fx, "s_", CONVERTERS)
    features = OnnxGraph(features_fx, "f_", CONVERTERS)
    structure.convert(example_inputs)
    features.convert(example_inputs + frontier)
    placeholders = [n.name for n in features_fx.graph.nodes if n.op == "placeholder"]
    model_inputs, frontier_names = placeholders[: len(example_inputs)], placeholders[len(example_inputs) :]
    structure.outputs = [
        replace(structure.emit("Identity", [v.name], v.dtype), name=name)
        for v, name in zip(structure.outputs, frontier_names)
    ]
    for node, name in zip(structure.nodes[-len(frontier_names) :], frontier_names):
        node.output[0] = name
    _remove_dead(features)
    topology = set(frontier_names) | {n for n, t in zip(model_inputs, example_inputs) if not t.is_floating_point()}
    handed = _hoist(structure, features, topology, set(model_inputs))
    _remove_dead(features)
    _remove_dead(structure, also_keep=handed)
    feeds = {name: t.numpy() for name, t in zip(model_inputs, example_inputs)}
    structure_model, handed_values = _finish(structure, handed, features.dtypes, feeds)
    features.inputs += [_to_value_info(n, a) for n, a in zip(handed, handed_values[len(frontier_names) :])]
    feeds.update({n: a for n, a in zip(frontier_names + handed, handed_values)})
    sums = _finite_sums(features, model_inputs, example_inputs)
    features_model, _ = _finish(features, sums, features.dtypes, feeds)
    return structure_model, features_model


def _finite_sums(features: OnnxGraph, model_inputs: Sequence[str], example_inputs: Sequence[Tensor]) -> list[str]:
    """Row sums (``ReduceSum`` over the last axis) of every floating model input the feature graph reads, appended
    as its last outputs (named ``FINITE_SUM_PREFIX + input``), from which the runner tells NaN/Inf: a sum is
    non-finite when an element is (or finite elements overflow, which the runner's exact test then rules out).
    onnxruntime computes them in its own thread pool; a NumPy pass costs ~0.4 ms more on Cora and a PyTorch one
    ~1.2 ms more, as its OpenMP workers spin while onnxruntime's want the cores."""
    read = {name for node in features.nodes for name in node.input}
    names = []
    for name, example in zip(model_inputs, example_inputs):
        if example.is_floating_point() and example.dim() > 0 and name in read:
            axis = features.const([example.dim() - 1], torch.int64)
            features.emit("ReduceSum", [name, axis], example.dtype, keepdims=0)
            total = features.nodes[-1].output[0] = FINITE_SUM_PREFIX + name  # the name the runner looks for
            features.dtypes[total] = example.dtype
            names.append(total)
    return names


def _finite_sum_inputs(output_names: Iterable[str]) -> list[str]:
    """The inputs whose row sums a feature graph returns (:func:`_finite_sums`), in the order of its outputs."""
    return [name.removeprefix(FINITE_SUM_PREFIX) for name in output_names if name.startswith(FINITE_SUM_PREFIX)]


# ----------------------------------------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------------------------------------
class OnnxBackend(Backend):
    """Option ``matmul``: the ``MatMulInteger`` formulation written to ``features.onnx`` (:mod:`.onnx_matmul`):
    ``"auto"`` (default) the fast one that is exact on the exporting CPU (u8 × s8 with VNNI, u8 × u8 without),
    ``"u8u8"`` exact on any CPU for use outside mixq_compile on an unknown target, ``"u8s8"`` the VNNI form.
    ``load_artifact`` rewrites a u8 × s8 model to u8 × u8 in memory on a CPU without VNNI, so an artifact is exact
    wherever it is loaded."""

    name = "onnx"

    def __init__(self, matmul: str = "auto") -> None:
        self.matmul = onnx_matmul.resolve(matmul)

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict:
        structure, features = convert_program(program, example_inputs)
        if self.matmul == "u8u8":
            features = onnx_matmul.as_u8u8(features)
        onnx.save(structure, directory / STRUCTURE_FILE)
        onnx.save(features, directory / FEATURES_FILE)
        formulation = self.matmul if any(n.op_type == "MatMulInteger" for n in features.graph.node) else "none"
        inputs = [i.name for i in features.graph.input]
        checked = [inputs.index(name) for name in _finite_sum_inputs(o.name for o in features.graph.output)]
        return {"structure": STRUCTURE_FILE, "features": FEATURES_FILE, "opset": OPSET, "matmul": formulation,
                "finite_checked_inputs": checked}  # fmt: skip

    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]:
        self.require()
        features = onnx.load(directory / entries["features"])
        features = onnx_matmul.for_this_cpu(features, entries.get("matmul", "u8s8"))
        return load_onnx(directory / entries["structure"]), load_onnx(features)

    def kernel_paths(self, entries: dict) -> dict[str, str]:
        written = entries.get("matmul", "u8s8")
        here = onnx_matmul.formulation_here(written)
        return {"matmul_integer": here if here == written else f"{here} (rewritten at load: this CPU has no VNNI)"}


def load_onnx(path: Path | onnx.ModelProto) -> Runner:
    """An ONNX model (file or in memory) as a callable on torch tensors returning a tuple of torch tensors (2
    intra-op threads)."""
    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    checked = _finite_sum_inputs(o.name for o in session.get_outputs())
    positions = [names.index(name) for name in checked]

    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = {name: t.detach().cpu().contiguous().numpy() for name, t in zip(names, inputs)}
        outputs = [torch.from_numpy(out) for out in session.run(None, feeds)]
        if checked:
            sums = outputs[-len(checked) :]
            del outputs[-len(checked) :]
            for name, position, total in zip(checked, positions, sums):
                if not bool(torch.isfinite(total).all()) and not all_finite(inputs[position]):
                    raise non_finite_error(f"input '{name}'")
        return tuple(outputs)

    return run
