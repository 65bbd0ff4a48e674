"""Integer lowering: the integer program equals the frozen fake-quant model, on the zoo and on adversarial graphs."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import fx

import mixq_compile as mq
from experiments import ptq_error
from mixq_compile.ir import instructions as K
from mixq_compile.ir.rules import MOVEMENT_OPS
from mixq_compile.lowering.lower_integer import LoweringError
from mixq_compile.models import PlanetoidGCN

from helpers import adversarial_graphs
from zoo import ALL, frozen_at_random_bits, lowered


def _output_step(frozen) -> float:
    """One step of the grid of the last activation quantizer in graph order (the tolerance of the comparison)."""
    last = [q for name, q in frozen.quantizers() if frozen.plan.site(name).kind != "weight"][-1]
    return float(last.scale.detach().abs().max())


@pytest.mark.parametrize("name", sorted(ALL))
def test_integer_program_matches_fake_quant_on_two_graph_sizes(name):
    frozen, args, inputs = frozen_at_random_bits(name)
    program = mq.lower(frozen)
    with torch.no_grad():
        for graph in (args, inputs(seed=1)):
            expected, got = frozen(*graph), program(*graph)
            assert got.shape == expected.shape
            assert (got - expected).abs().max() <= _output_step(frozen) + 1e-5, name


def test_integer_program_uses_integer_kernels_and_integer_dtypes():
    frozen, args, _ = frozen_at_random_bits("paper_gcn")
    program = mq.lower(frozen)
    targets = {n.target for n in program.features.graph.nodes if n.op == "call_function"}
    assert {K.linear_int, K.scatter_sum_int, K.mul_int, K.requantize} <= targets
    assert program.float_ops == ()
    weights = [b for name, b in program.features.named_buffers() if name.startswith("wt_")]
    assert weights and all(w.dtype == torch.int8 for w in weights)
    frontier = program.structure(*args)
    assert any(t.dtype == torch.int32 for t in frontier), "edge-weight codes should be preprocessed integers"


def test_edge_weight_product_uses_both_zero_points():
    """An affine edge-weight grid (z_e != 0) must still be exact: the product is (q_e - z_e)(q_x - z_x)."""
    frozen, args, _ = frozen_at_random_bits("paper_gcn")
    quantizer = frozen.quantizer("conv1.edge_weight")
    with torch.no_grad():
        quantizer.zero_point.fill_(3.0)  # shift the grid: real zero is code 3
    program = mq.lower(frozen)
    with torch.no_grad():
        assert (program(*args) - frozen(*args)).abs().max() <= _output_step(frozen) + 1e-5


def test_lowering_refuses_a_mixed_model():
    torch.manual_seed(0)
    x, edge_index = ALL["paper_gcn"][1]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(PlanetoidGCN(8, 4, hidden=16).eval(), (x, edge_index))
    with pytest.raises(LoweringError, match="freeze"):
        mq.lower(qmodel)


def test_kernels_requantize_fixed_point_matches_float_multiplier():
    acc = torch.randint(-(2**20), 2**20, (1000,), dtype=torch.int32)
    multiplier = torch.tensor(0.0123456)
    shift = torch.tensor(38, dtype=torch.int64)
    mantissa = torch.round(multiplier.double() * 2.0**38).to(torch.int64)
    zero = torch.tensor(5, dtype=torch.int32)
    fixed = K.requantize_fixed_point(acc, mantissa, shift, zero, -128, 127).int()
    floating = K.requantize(acc, multiplier, zero, -128, 127).int()
    assert (fixed - floating).abs().max() <= 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=adversarial_graphs(), name=st.sampled_from(["paper_gcn", "sage_sum", "graphconv", "gat"]))
def test_integer_program_matches_on_adversarial_graphs(graph, name):
    frozen, program = lowered(name)
    x, edge_index = graph
    with torch.no_grad():
        expected, got = frozen(x, edge_index), program(x, edge_index)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max() <= _output_step(frozen) + 1e-5


def test_fixed_point_requantization_stays_within_one_step_per_layer():
    frozen, args, inputs = frozen_at_random_bits("paper_gcn")
    program = mq.lower(frozen, fixed_point=True)
    targets = {n.target for n in program.features.graph.nodes if n.op == "call_function"}
    assert K.requantize_fixed_point in targets and K.requantize not in targets
    layers = 2
    with torch.no_grad():
        for graph in (args, inputs(seed=1)):
            assert (program(*graph) - frozen(*graph)).abs().max() <= layers * _output_step(frozen) + 1e-5


@pytest.mark.parametrize("options", [{"cache_structure": True}, {"degree_quant": True}])
def test_structure_cache_and_degree_quant_models_lower_to_the_same_exact_program(options):
    from mixq_compile.config import DegreeQuant, QuantConfig

    torch.manual_seed(0)
    args = ALL["paper_gcn"][1]()
    config = QuantConfig(
        cache_structure=options.get("cache_structure", False),
        degree_quant=DegreeQuant() if options.get("degree_quant") else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(PlanetoidGCN(8, 4, hidden=16).eval(), args, config=config)
    frozen = mq.freeze(qmodel, dict.fromkeys(qmodel.chosen_bits(), 4)).eval()
    program = mq.lower(frozen)
    names = {n.target for n in program.features.graph.nodes if n.op == "call_module"}
    assert not names, f"training-only modules left in the program: {names}"
    with torch.no_grad():
        assert (program(*args) - frozen(*args)).abs().max() <= _output_step(frozen) + 1e-5


def test_a_mean_aggregation_counts_rows_without_dequantizing_the_gathered_messages():
    """PyG's mean scatters ``x_j.new_ones(E)`` to count rows: the integer program must not dequantize the [E, C]
    gathered codes to read their dtype (at 10M edges × 128 channels that was 5 GB of float32 per layer)."""
    from torch_geometric.nn import SAGEConv

    from helpers import random_graph

    class Sage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = SAGEConv(16, 8)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    x, edge_index = random_graph(50, 300, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = mq.freeze(mq.quantize(Sage().eval(), (x, edge_index)), bits=8).eval()
    program = mq.lower(frozen)
    assert not any("new_ones" in op for op in program.float_ops)
    gathered = [n for n in program.features.graph.nodes if n.target == torch.ops.aten.index_select.default]
    assert gathered and all(u.target is not K.dequantize for n in gathered for u in n.users)
    # the output is the mean dequantized from int32 sums: equal up to float32 rounding
    torch.testing.assert_close(program(x, edge_index), frozen(x, edge_index))


def _reaches_integer_work(node: fx.Node) -> bool:
    """Whether codes produced by ``node`` reach an instruction that computes on them (not only a dequantize or the
    output), through movement ops and ReLUs on codes."""
    for user in node.users:
        if user.op == "call_function" and user.target is K.dequantize:
            continue
        if user.op == "output":
            return False
        if user.op == "call_function" and (user.target in MOVEMENT_OPS or user.target is K.relu_codes):
            if _reaches_integer_work(user):
                return True
            continue
        return True
    return False


#: Models whose 3-D ``matmul`` operands are quantized but multiplied in float: the lowering computes ``aten.linear``
#: in integers, not batched matmuls (ARMA's stacks, GatedGraphConv's weight per layer); the program lists them.
FLOAT_MATMULS = frozenset({"ARMAConv", "GatedGraphConv"})


@pytest.mark.parametrize("name", sorted(ptq_error.MODELS))
def test_every_value_the_program_rounds_is_computed_on_in_integers(name):
    """Sites whose codes only a float op or the output would read are left in float (a GCNConv's aggregate before
    its bias, the last layer's output, the maximum a softmax subtracts): each requantization of an accumulator, and
    each quantization but those of operands of a float matmul, feeds integer work. The paper's convention keeps
    them (QuantConfig.quantize_unread_sites)."""
    torch.manual_seed(0)
    graph = ptq_error.random_graph(ptq_error.GRAPH_A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(ptq_error.MODELS[name]().eval(), graph)
        paper = mq.quantize(ptq_error.MODELS[name]().eval(), graph, config=mq.QuantConfig(quantize_unread_sites=True))
    program = mq.lower(mq.freeze(qmodel, 8).eval())
    rounding = [n for n in program.features.graph.nodes if n.target in (K.quantize, K.requantize)]
    if name in FLOAT_MATMULS:
        assert any("matmul" in op for op in program.float_ops)
        rounding = [n for n in rounding if n.target is K.requantize]
    assert (rounding or name in FLOAT_MATMULS) and all(_reaches_integer_work(n) for n in rounding), [
        n.name for n in rounding if not _reaches_integer_work(n)
    ]
    assert {s.name for s in qmodel.plan.sites} < {s.name for s in paper.plan.sites}
    for op in qmodel.plan.ops:  # no op record names a removed site
        assert {*op.owned, *op.operand_grids, op.edge_weight, op.output} - {None} <= {s.name for s in qmodel.plan.sites}
