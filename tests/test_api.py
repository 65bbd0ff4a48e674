"""quantize() behaviour as a module, the pass pipeline's contracts, and clear errors on bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch_geometric.nn import (
    AttentionalAggregation,
    EdgeConv,
    GCNConv,
    GINConv,
    GraphNorm,
    InstanceNorm,
    SAGEConv,
    global_add_pool,
    global_max_pool,
    global_mean_pool,
)

import mixq_compile as mq
from mixq_compile.ir.modes import ModeBatchNorm, ModeDropout
from mixq_compile.models import ArxivGCN, PlanetoidGCN

from helpers import random_batch, random_graph


def _quiet_quantize(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(*args, **kwargs)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = GCNConv(4, 4)

    def forward(self, x, edge_index):
        if x.sum() > 0:  # Python control flow on a tensor value cannot be exported
            return self.conv(x, edge_index)
        return x


def test_train_and_eval_really_switch_dropout_and_batch_norm():
    x, ei = random_graph(60, 240, 8)
    q = _quiet_quantize(ArxivGCN(8, 3, hidden=16), (x, ei), (8,))
    assert any(isinstance(m, ModeBatchNorm) for m in q.modules())
    bn_mean = next(b for n, b in q.named_buffers() if n.endswith("running_mean"))
    before = bn_mean.clone()
    q.train()
    q(x, ei)
    assert not torch.equal(bn_mean, before), "training must update batch-norm running statistics"
    q.eval()
    frozen_stats = bn_mean.clone()
    a, b = q(x, ei), q(x, ei)
    assert torch.equal(a, b) and torch.equal(bn_mean, frozen_stats)

    d = _quiet_quantize(PlanetoidGCN(8, 3, hidden=16), (x, ei), (8,))
    assert sum(isinstance(m, ModeDropout) for m in d.modules()) == 2
    d.train()
    assert not torch.equal(d(x, ei), d(x, ei)), "dropout must be active in train mode"
    d.eval()
    assert torch.equal(d(x, ei), d(x, ei))


def test_quantize_keeps_the_model_mode_and_parameters_and_state_dict_round_trips():
    x, ei = random_graph(30, 90, 8)
    model = PlanetoidGCN(8, 3, hidden=16).eval()
    q = _quiet_quantize(model, (x, ei))
    assert not q.training
    names = [n for n, _ in q.named_parameters()]
    assert any(n.endswith("conv1.lin.weight") for n in names) and any(n.endswith(".alpha") for n in names)
    q2 = _quiet_quantize(PlanetoidGCN(8, 3, hidden=16).eval(), (x, ei))
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2(x, ei), q(x, ei))


def test_every_quantizer_sits_in_the_graph_and_sites_print_as_a_table():
    x, ei = random_graph(30, 90, 8)
    q = _quiet_quantize(PlanetoidGCN(8, 3, hidden=16), (x, ei))
    targets = {n.target for n in q.graph_module.graph.nodes if n.op == "call_module"}
    assert {f"mixq.{s.module_key}" for s in q.plan.sites} <= targets
    text = str(mq.sites(q))
    assert "conv1.lin.weight" in text and "0.29 0.29 0.42" in text and "8 sites" in text  # the logits stay float


def test_capture_error_names_the_problem_and_the_fixes():
    x, ei = random_graph(20, 40, 4)
    with pytest.raises(mq.CaptureError) as info:
        mq.quantize(DataDependent(), (x, ei))
    message = str(info.value)
    assert "DataDependent" in message and "Usual fixes" in message
    assert len(message) < 3000


@pytest.mark.parametrize("bits", [(), (0, 4), (4, 33), (2, 2), "8"])
def test_bad_bit_widths_raise_value_error(bits):
    x, ei = random_graph(20, 40, 4)
    with pytest.raises(ValueError):
        mq.quantize(GCNConv(4, 4), (x, ei), bits)


def test_wrong_inputs_at_run_time_raise_clear_errors():
    x, ei = random_graph(20, 40, 4)
    q = _quiet_quantize(GCNConv(4, 4), (x, ei))
    with pytest.raises(mq.InputSignatureError, match="rank"):
        q(x.unsqueeze(0), ei)
    with pytest.raises(mq.InputSignatureError, match="fixed at 4"):
        q(torch.randn(20, 5), ei)
    with pytest.raises(mq.InputSignatureError, match="takes 2 inputs"):
        q(x)
    with pytest.raises(mq.InputSignatureError, match="dtype"):
        q(x, ei.float())


def test_model_without_quantizable_ops_is_rejected():
    with pytest.raises(mq.NoQuantizableOpError, match="no quantizable operation"):
        mq.quantize(nn.ReLU(), (torch.randn(5, 3),))


def test_nan_example_inputs_are_rejected():
    x, ei = random_graph(20, 40, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mq.quantize(GCNConv(4, 4), (x, ei))


def test_config_kinds_restrict_sites_and_overrides_apply():
    x, ei = random_graph(30, 90, 8)
    config = mq.QuantConfig(kinds=frozenset({"weight"}), site_bit_widths={"conv2.*": (4, 8)})
    q = _quiet_quantize(PlanetoidGCN(8, 3, hidden=16), (x, ei), config=config)
    rows = list(mq.sites(q))
    assert [r.kind for r in rows] == ["weight", "weight"]
    assert rows[1].candidates == (4, 8) and rows[0].candidates == (2, 4, 8)
    with pytest.raises(ValueError, match="unknown site kinds"):
        mq.QuantConfig(kinds=frozenset({"weights"}))


def test_freeze_with_explicit_bits_and_off_candidate_bits():
    x, ei = random_graph(30, 90, 8)
    q = _quiet_quantize(PlanetoidGCN(8, 3, hidden=16), (x, ei))
    frozen = mq.freeze(q, bits={"conv1.lin.weight": 2, "conv2.lin.weight": 6})
    bits = frozen.chosen_bits()
    assert bits["conv1.lin.weight"] == 2 and bits["conv2.lin.weight"] == 6 and bits["conv1.aggregate"] == 8
    with pytest.raises(ValueError, match="unknown sites"):
        mq.freeze(q, bits={"conv9.weight": 4})
    with pytest.raises(TypeError, match="quantize"):
        mq.freeze(PlanetoidGCN(8, 3))


def test_unsigned_range_after_relu():
    x, _ = random_graph(30, 90, 8)

    class ReluThenLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x).relu())

    q = _quiet_quantize(ReluThenLinear(), (x,))
    signed = {s.name: s.spec.signed for s in q.plan.sites}
    assert signed["a.output"] is True
    assert "b.input" not in signed, "ReLU keeps a.output's grid: no second quantizer"


def test_training_the_quantized_model_leaves_the_fp32_model_unchanged():
    args = random_graph(30, 90, 8)
    model = PlanetoidGCN(8, 3, hidden=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args)
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.5)
    qmodel(*args).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = qmodel.graph_module.conv1.lin.weight
    assert not torch.equal(changed, before["conv1.lin.weight"])


@pytest.mark.parametrize("pool", [global_max_pool, global_mean_pool])
def test_readout_after_message_passing_is_pooling_not_a_message(pool):
    """The readout's input descends from gathered rows only through the conv's aggregation: it is pooled node
    features (kinds pool_input/pool, category pooling), not a custom message."""
    x, edge_index, batch = random_batch(4, 6, 8)

    class ConvThenReadout(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = GINConv(nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
            self.norm = nn.BatchNorm1d(8)
            self.head = nn.Linear(8, 2)

        def forward(self, x, edge_index, batch):
            return self.head(pool(self.norm(self.conv(x, edge_index)), batch))

    q = _quiet_quantize(ConvThenReadout().eval(), (x, edge_index, batch))
    categories = [op.category for op in q.plan.ops]
    assert categories.count("message_passing") == 1 and categories.count("pooling") == 1
    kinds = {s.kind for s in q.plan.sites}
    assert "pool_input" in kinds and ("pool" in kinds) == (pool is global_mean_pool)
    assert [s.kind for s in q.plan.sites].count("message") == 1
    assert ("readout.pool_input" if pool is global_max_pool else "readout.pool") in {s.name for s in q.plan.sites}


class _ConvThen(nn.Module):
    """A GIN layer, then ``tail(h, batch)`` (a norm and sum readout, or an attention readout), then a head."""

    def __init__(self, tail: str):
        super().__init__()
        self.conv = GINConv(nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
        self.tail_kind = tail
        self.tail = {
            "graph_norm": lambda: GraphNorm(8),
            "instance_norm": lambda: InstanceNorm(8, affine=True),
            "attention": lambda: AttentionalAggregation(nn.Linear(8, 1)),
        }[tail]()
        self.head = nn.Linear(8, 2)

    def forward(self, x, edge_index, batch):
        h = self.tail(self.conv(x, edge_index), batch)
        return self.head(h if self.tail_kind == "attention" else global_add_pool(h, batch))


@pytest.mark.parametrize("tail", ["graph_norm", "instance_norm", "attention"])
def test_values_sent_back_to_their_members_are_pooling_not_messages(tail):
    """GraphNorm's ``mean[batch]`` and a softmax's per-graph maximum gather rows along the index they were pooled
    by: nothing moves between nodes, so the scatters after them are pooling (before: messages named after internal
    nodes, e.g. ``add_4.message``, counted per edge in the paper's BitOPs)."""
    x, edge_index, batch = random_batch(4, 6, 8)
    q = _quiet_quantize(_ConvThen(tail).eval(), (x, edge_index, batch))
    categories = [op.category for op in q.plan.ops]
    assert categories.count("message_passing") == 1 and categories.count("pooling") >= 3
    assert [s.kind for s in q.plan.sites].count("message") == 1
    layers = {s.name.split(".")[0] for s in q.plan.sites}
    assert layers <= {"conv", "tail", "readout", "head"}, layers


def test_a_readout_straight_after_a_max_aggregation_is_pooling():
    """EdgeConv's max aggregation feeds the readout directly: the readout's source is itself an aggregation, whose
    gathered inputs were already reduced to nodes."""
    x, edge_index, batch = random_batch(4, 6, 8)

    class EdgeReadout(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = EdgeConv(nn.Linear(16, 8)), nn.Linear(8, 2)

        def forward(self, x, edge_index, batch):
            return self.head(global_add_pool(self.conv(x, edge_index), batch))

    q = _quiet_quantize(EdgeReadout().eval(), (x, edge_index, batch))
    assert [op.category for op in q.plan.ops if op.target != "aten.linear.default"] == ["message_passing", "pooling"]
    assert "readout.pool" in {s.name for s in q.plan.sites}


def test_copying_exported_graphs_does_not_leak_torchs_pytree_deprecation_warning():
    x, edge_index = random_graph(30, 90, 8)
    q = _quiet_quantize(PlanetoidGCN(8, 3, hidden=8), (x, edge_index))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frozen = mq.freeze(q)
        mq.bitops(frozen, (x, edge_index))
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


def test_mean_aggregation_counts_neighbours_in_float():
    """PyG's mean aggregation scatters ``new_ones`` to count each node's neighbours: a count made from the message's
    shape, not its values, so it is structure — quantizing it (as before) rounded the divisor itself."""
    x, edge_index = random_graph(30, 90, 8)
    q = _quiet_quantize(SAGEConv(8, 4, aggr="mean"), (x, edge_index))
    kinds = [s.kind for s in q.plan.sites]
    assert kinds.count("message") == 1 and kinds.count("aggregate") == 1
    assert [op.category for op in q.plan.ops].count("message_passing") == 1


def test_the_documented_search_recipe_lowers_bits_on_a_model_outside_the_zoo():
    """A user's GAT (residual, LayerNorm): λ = 1 lowers the bits within 30 steps, further with the logits' own
    learning rate (mq.search_param_groups) than with one rate for everything."""
    import torch.nn.functional as F
    from torch_geometric.nn import GATConv

    class UserGAT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = GATConv(8, 16, heads=2), GATConv(32, 16, heads=2)
            self.norm, self.head = torch.nn.LayerNorm(32), torch.nn.Linear(32, 3)

        def forward(self, x, edge_index):
            h = self.conv1(x, edge_index).relu()
            return self.head(self.norm(h + self.conv2(h, edge_index)))

    torch.manual_seed(0)
    x, edge_index = random_graph(60, 240, 8)
    y = torch.randint(0, 3, (60,))

    def search(groups) -> float:
        torch.manual_seed(0)
        qmodel = _quiet_quantize(UserGAT(), (x, edge_index))
        assert len(mq.arch_parameters(qmodel)) == len(mq.sites(qmodel)) and mq.weight_parameters(qmodel)
        optimizer = torch.optim.Adam(groups(qmodel))
        for _ in range(30):
            optimizer.zero_grad()
            loss = F.cross_entropy(qmodel(x, edge_index), y) + 1.0 * mq.penalty(qmodel)
            loss.backward()
            optimizer.step()
        bits = mq.freeze(qmodel).chosen_bits()
        return sum(bits.values()) / len(bits)

    one_rate = search(lambda q: [{"params": q.parameters(), "lr": 0.01}])
    own_rate = search(lambda q: mq.search_param_groups(q, lr=0.01, arch_lr=0.1))
    print(f"mean bits after 30 steps at λ = 1: one rate {one_rate:.2f}, the logits' own rate {own_rate:.2f}")
    assert one_rate < 6.0, "λ = 1 lowers the bits from 8 with the README's one-optimizer recipe"
    assert own_rate < 5.0 and own_rate < one_rate, "the logits' own rate lets λ = 1 lower the bits further"
