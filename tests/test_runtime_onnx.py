"""The onnx backend: real integer ONNX ops, checker-valid graphs, dynamic sizes, equality with the integer executor."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import fx, nn

import mixq_compile as mq
from mixq_compile.artifact import export, load_artifact, lower_for_export
from mixq_compile.ir import instructions as K
from mixq_compile.ir.program import IntegerProgram
from mixq_compile.models import SAGE, TUGIN, PlanetoidGCN
from mixq_compile.runtimes import BACKENDS
from mixq_compile.runtimes.onnx.backend import convert_program, load_onnx
from mixq_compile.runtimes.onnx.converters import CONVERTERS
from mixq_compile.runtimes.onnx.graph import OnnxConversionError

from helpers import GraphNormGIN, output_step, random_batch, random_graph

GCN_BITS = {
    "int8": {},
    "w4_e4": {"conv1.lin.weight": 4, "conv2.lin.weight": 4, "conv1.edge_weight": 4, "conv2.edge_weight": 4},
    "w2_w4_a4": {"conv1.lin.weight": 2, "conv2.lin.weight": 4, "conv2.edge_weight": 4, "conv1.lin.output": 4},
}


def _search(model, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model.eval(), args, (2, 4, 8))


def _freeze(qmodel, bits):
    chosen = {site: 8 for site in qmodel.chosen_bits()} | bits
    return mq.freeze(qmodel, bits=chosen).eval()


@pytest.fixture(scope="module")
def gcn():
    """One calibrated GCN search model (frozen at several widths below) and its two graphs."""
    torch.manual_seed(0)
    args, other = random_graph(50, 200, 16), random_graph(83, 410, 16, seed=2)
    return _search(PlanetoidGCN(16, 7, hidden=32), args), args, other


def _models(path):
    return [onnx.load(path / name) for name in ("structure.onnx", "features.onnx")]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {i.name: i.type.tensor_type.elem_type for i in infos}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _check_integer_graph(path, weight_types: set[int]) -> None:
    models = _models(path)
    for model in models:
        onnx.checker.check_model(model)
    ops = {(n.op_type, n.input[0]) for m in models for n in m.graph.node}
    assert any(op == "MatMulInteger" for op, _ in ops)
    features = models[1]
    types = _elem_types(features)
    prefix_sums = {types[n.input[0]] for n in features.graph.node if n.op_type == "CumSum"}
    assert prefix_sums == {onnx.TensorProto.INT32}, "aggregation must be int32 prefix sums (segment bounds hoisted)"
    initializer_types = {t.data_type for t in features.graph.initializer}
    assert weight_types <= initializer_types


def _assert_matches_reference(artifact, program, inputs_list) -> None:
    lsb = output_step(program)
    for inputs in inputs_list:
        expected = program(*inputs)
        got = artifact(*inputs)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= lsb + 1e-6


@pytest.mark.parametrize("config", sorted(GCN_BITS))
def test_gcn_integer_artifact_uses_integer_ops_and_equals_the_executor_on_two_sizes(gcn, config, tmp_path):
    search, args, other = gcn
    frozen = _freeze(search, GCN_BITS[config])
    path = export(frozen, args, tmp_path / "gcn", backend="onnx")
    bits = set(GCN_BITS[config].values())
    expected_types = {onnx.TensorProto.INT4} if 4 in bits else set()
    expected_types |= {onnx.TensorProto.INT2} if 2 in bits else set()
    artifact = load_artifact(path, cache_structure=True)
    # 8-bit weights are int8 in the VNNI (u8 x s8) form, uint8 (w + 128) in the exact-everywhere u8 x u8 form
    byte = onnx.TensorProto.INT8 if artifact.manifest["backend_entries"]["matmul"] == "u8s8" else onnx.TensorProto.UINT8
    _check_integer_graph(path, expected_types or {byte})
    assert artifact.manifest["backend"] == "onnx" and artifact.manifest["precision"] == "integer"
    _assert_matches_reference(artifact, mq.lower(frozen), [args, other, args])


def test_sub_8_bit_weights_are_stored_packed(gcn, tmp_path):
    search, args, _ = gcn
    expected = {8: (onnx.TensorProto.INT8, 512), 4: (onnx.TensorProto.INT4, 256), 2: (onnx.TensorProto.INT2, 128)}
    for bits, (data_type, size) in expected.items():  # conv1's weight: 16 x 32 codes
        frozen = _freeze(search, {"conv1.lin.weight": bits})
        path = export(frozen, args, tmp_path / str(bits), backend="onnx", backend_options={"matmul": "u8s8"})
        (weight,) = [t for t in _models(path)[1].graph.initializer if "wt_conv1" in t.name]
        assert (weight.data_type, len(weight.raw_data)) == (data_type, size)


@pytest.mark.parametrize("kind", ["gin", "sage"])
def test_gin_and_sage_integer_artifacts_equal_the_executor_on_two_sizes(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "gin":
        model, args, other = TUGIN(8, 3, hidden=16, layers=3), random_batch(6, 9, 8), random_batch(9, 12, 8, seed=1)
    else:
        model, args, other = SAGE(8, 4, hidden=16), random_graph(40, 160, 8), random_graph(71, 300, 8, seed=1)
    frozen = _freeze(_search(model, args), {})
    path = export(frozen, args, tmp_path / kind, backend="onnx")
    _check_integer_graph(path, set())
    _assert_matches_reference(load_artifact(path), mq.lower(frozen), [args, other])


def test_graph_norm_integer_artifact_equals_the_executor(tmp_path):
    """GraphNorm's per-graph statistics stay in float between integer layers (its ``sqrt`` has a converter); its
    scatters are pooling sites, lowered like any readout."""
    torch.manual_seed(0)
    args, other = random_batch(6, 9, 8), random_batch(9, 12, 8, seed=1)
    frozen = _freeze(_search(GraphNormGIN(8), args), {})
    path = export(frozen, args, tmp_path / "graph_norm", backend="onnx")
    _check_integer_graph(path, set())
    assert "Sqrt" in {n.op_type for n in _models(path)[1].graph.node}
    _assert_matches_reference(load_artifact(path), mq.lower(frozen), [args, other])


def test_fp32_artifact_matches_the_fp32_model(tmp_path):
    torch.manual_seed(0)
    model, args, other = PlanetoidGCN(16, 7, hidden=32).eval(), random_graph(50, 200, 16), random_graph(90, 500, 16, 1)
    path = export(model, args, tmp_path / "gcn", backend="onnx")
    for m in _models(path):
        onnx.checker.check_model(m)
    artifact = load_artifact(path, cache_structure=True)
    assert artifact.manifest["precision"] == "fp32"
    with torch.no_grad():
        for inputs in (args, other):
            torch.testing.assert_close(artifact(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)


def test_fp32_gin_program_with_batch_norm_and_max_pool_matches_the_model():
    """The backend alone, without writing an artifact."""
    torch.manual_seed(0)
    model, args, other = TUGIN(8, 3, hidden=16, layers=3).eval(), random_batch(6, 9, 8), random_batch(9, 12, 8, seed=1)
    program, precision, _ = lower_for_export(model, args)
    assert precision == "fp32"
    structure_run, features_run = (load_onnx(m) for m in convert_program(program, args))
    with torch.no_grad():
        for inputs in (args, other):
            (got,) = features_run(*inputs, *structure_run(*inputs))
            np.testing.assert_allclose(got, model(*inputs).numpy(), atol=1e-4, rtol=1e-4)


def test_every_instruction_has_a_converter_and_the_rare_ones_are_exact():
    assert "onnx" in BACKENDS
    assert set(K.INSTRUCTIONS.values()) <= set(CONVERTERS.functions)

    root, graph = nn.Module(), fx.Graph()

    def const(name, value):
        root.register_buffer(name, torch.tensor(value))
        return graph.get_attr(name)

    x, index = graph.placeholder("x"), graph.placeholder("index")
    wide = graph.call_function(K.quantize, (x, const("s", 0.01), const("z", 3), -1000, 1000))  # int16 codes
    acc = graph.call_function(K.center, (wide, const("z2", 3)))
    fixed = graph.call_function(
        K.requantize_fixed_point, (acc, const("m", 1 << 20), const("sh", 24), const("z3", -2), -8, 7)
    )
    centered = graph.call_function(K.center, (fixed, const("z4", -2)))
    summed = graph.call_function(K.index_sum_int, (centered, 0, index, [5, 4]))
    column = graph.call_function(torch.ops.aten.view.default, (index, [-1, 1]))
    expanded = graph.call_function(torch.ops.aten.expand_as.default, (column, acc))
    low = graph.call_function(K.scatter_select_int, (acc, 0, expanded, [5, 4], "amin"))
    both = graph.call_function(K.add_int, (summed, low))
    graph.output((graph.call_function(K.dequantize, (wide, const("s2", 0.01), const("z5", 3))),
                  graph.call_function(K.dequantize_acc, (both, const("s3", 0.5)))))  # fmt: skip
    features = fx.GraphModule(root, graph)
    structure = fx.GraphModule(nn.Module(), _empty_structure("x", "index"))
    integer = IntegerProgram(structure, features, (), {}, (), (), None)
    inputs = torch.randn(12, 4) * 5, torch.tensor([0, 1, 1, 3, 3, 3, 0, 1, 1, 3, 3, 0])
    models = convert_program(integer, inputs)
    structure_run, features_run = (load_onnx(m) for m in models)
    got = features_run(*inputs, *structure_run(*inputs))
    for a, b in zip(got, features(*inputs)):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("grid", [(-128, 127), (-8, 7), (0, 3)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_with_a_zero_point_is_one_exact_quantize_linear(grid, per_channel):
    """Affine grids: ``QuantizeLinear`` alone (no division or add before it) gives the instruction's codes, at
    exact ties and at values a hair either side of them, for every zero-point of the grid."""
    qmin, qmax = grid
    channels = qmax - qmin + 1 if per_channel else 1
    scale = torch.linspace(0.013, 0.9, channels) if per_channel else torch.tensor(0.037)
    zero = torch.arange(qmin, qmax + 1).float() if per_channel else torch.tensor(float(qmin + 1))
    steps = torch.arange(-300, 300).float().reshape(-1, 1) + 0.5
    ties = steps * scale  # x / scale lands on (or within one float rounding of) .5
    x = torch.cat([ties, ties.nextafter(ties + 1), ties.nextafter(ties - 1), torch.randn(64, channels) * 9])
    root, graph = nn.Module(), fx.Graph()
    root.register_buffer("s", scale)
    root.register_buffer("z", zero)
    x_node, index = graph.placeholder("x"), graph.placeholder("index")
    codes = graph.call_function(K.quantize, (x_node, graph.get_attr("s"), graph.get_attr("z"), qmin, qmax))
    centered = graph.call_function(K.center, (codes, graph.get_attr("z")))
    graph.output((centered, graph.call_function(K.index_sum_int, (centered, 0, index, [3, channels]))))
    features = fx.GraphModule(root, graph)
    structure = fx.GraphModule(nn.Module(), _empty_structure("x", "index"))
    inputs = x, torch.arange(x.shape[0]) % 3
    models = convert_program(IntegerProgram(structure, features, (), {}, (), (), None), inputs)
    assert "Div" not in {n.op_type for n in models[1].graph.node}
    structure_run, features_run = (load_onnx(m) for m in models)
    for got, expected in zip(features_run(*inputs, *structure_run(*inputs)), features(*inputs)):
        np.testing.assert_array_equal(got, expected.numpy())


def _empty_structure(*names: str) -> fx.Graph:
    """A structure program with no frontier (its inputs carry the feature program's input names)."""
    graph = fx.Graph()
    for name in names:
        graph.placeholder(name)
    graph.output(())
    return graph


class _Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, edge_index):
        return self.lin(x).cumsum(0)


def test_an_op_without_converter_is_a_clear_error(tmp_path):
    args = random_graph(10, 20, 4)
    with pytest.raises(OnnxConversionError, match=r"cumsum.*CONVERTERS.*backend='torch'"):
        export(_Cumulative(), args, tmp_path / "bad", backend="onnx")
    assert not (tmp_path / "bad").exists()
