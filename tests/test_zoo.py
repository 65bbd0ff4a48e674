"""quantize() on a zoo of unmodified FP32 PyG models: sites, 8-bit accuracy, gradients, freeze, save/load, resize."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, random_graph
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, GraphConv, MessagePassing, SAGEConv, TAGConv, global_add_pool
from torch_geometric.nn import models as pyg_models

import mixq_compile as mq
from mixq_compile.models import CSLGCN, SAGE, TAG, TUGIN, ArxivGCN, PlanetoidGCN
from mixq_compile.quant import FakeQuantizer, MixedQuantizer

MP_KINDS = {"message", "edge_weight", "aggregate"}


class EdgeGatedConv(MessagePassing):
    """A user-written layer with its own message(): a learned gate on (x_i, x_j)."""

    def __init__(self, channels: int) -> None:
        super().__init__(aggr="add")
        self.lin = nn.Linear(channels, channels)
        self.gate = nn.Linear(2 * channels, 1)

    def forward(self, x, edge_index):
        return self.propagate(edge_index, x=self.lin(x))

    def message(self, x_i, x_j):
        return torch.sigmoid(self.gate(torch.cat([x_i, x_j], dim=-1))) * x_j


class Node(nn.Module):
    """Wraps one conv as a 2-layer node model."""

    def __init__(self, make, hidden=16, out=4):
        super().__init__()
        self.conv1 = make(8, hidden)
        self.conv2 = make(hidden, out)

    def forward(self, x, edge_index):
        return self.conv2(F.dropout(self.conv1(x, edge_index).relu(), 0.3, self.training), edge_index)


class GINAddPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = GINConv(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16)))
        self.bn = nn.BatchNorm1d(16)
        self.lin = nn.Linear(16, 3)

    def forward(self, x, edge_index, batch):
        return self.lin(global_add_pool(self.bn(self.conv(x, edge_index)).relu(), batch))


class CustomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.conv = EdgeGatedConv(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x, edge_index):
        h = self.inp(x).relu()
        return self.out(h + self.conv(h, edge_index))


def _node_inputs(seed=0):
    return random_graph(40 + 13 * seed, 160 + 50 * seed, 8, seed=seed)


def _graph_inputs(seed=0):
    return random_batch(6 + 3 * seed, 9, 8, seed=seed)


NODE_MODELS = {
    "gcn": lambda: Node(lambda a, b: GCNConv(a, b)),
    "paper_gcn": lambda: PlanetoidGCN(8, 4, hidden=16),
    "arxiv_gcn_bn": lambda: ArxivGCN(8, 4, hidden=16),
    "sage_mean": lambda: Node(lambda a, b: SAGEConv(a, b, aggr="mean")),
    "sage_sum": lambda: SAGE(8, 4, hidden=16, aggr="sum"),
    "gat": lambda: Node(lambda a, b: GATConv(a, b, heads=2, concat=False)),
    "tag": lambda: TAG(8, 4, hidden=16),
    "tagconv": lambda: Node(lambda a, b: TAGConv(a, b, K=2)),
    "graphconv": lambda: Node(lambda a, b: GraphConv(a, b)),
    "pyg_basic_gcn": lambda: pyg_models.GCN(8, 16, 2, 4),
    "pyg_basic_gin": lambda: pyg_models.GIN(8, 16, 2, 4),
    "pyg_basic_sage": lambda: pyg_models.GraphSAGE(8, 16, 2, 4),
    "pyg_basic_gat": lambda: pyg_models.GAT(8, 16, 2, 4),
    "custom_message": CustomNet,
}
GRAPH_MODELS = {
    "gin_add_pool_bn": GINAddPool,
    "paper_gin_max_pool": lambda: TUGIN(8, 3, hidden=16, layers=3),
    "csl_gcn_residual_bn": lambda: CSLGCN(8, 3, hidden=12, layers=2),
}
ALL = {
    **{k: (v, _node_inputs) for k, v in NODE_MODELS.items()},
    **{k: (v, _graph_inputs) for k, v in GRAPH_MODELS.items()},
}

#: Relative L2 error of the 8-bit model vs FP32 (measured 0.003-0.019 across the zoo; random weights and inputs).
MAX_8BIT_ERROR = 0.04


def _quantize(name, bit_widths=(2, 4, 8)):
    factory, inputs = ALL[name]
    torch.manual_seed(0)
    model = factory().eval()
    args = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args, bit_widths)
    return model, qmodel, args


def _rel_error(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", sorted(ALL))
def test_eight_bit_output_is_close_to_fp32_and_message_passing_sites_are_found(name):
    model, qmodel, args = _quantize(name, bit_widths=(8,))
    qmodel.eval()
    kinds = {row.kind for row in mq.sites(qmodel)}
    assert kinds & MP_KINDS, f"{name}: no message-passing site among {kinds}"
    assert {"weight", "linear_out"} <= kinds
    with torch.no_grad():
        error = _rel_error(qmodel(*args), model(*args))
    assert error < MAX_8BIT_ERROR, f"{name}: 8-bit relative error {error:.4f}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_gradients_reach_weights_and_alpha_and_freeze_save_load_and_resize_work(name, tmp_path):
    _, qmodel, args = _quantize(name)
    qmodel.train()
    out = qmodel(*args)
    loss = out.pow(2).mean() + 0.1 * mq.penalty(qmodel)
    loss.backward()
    weights = [p for n, p in qmodel.named_parameters() if n.endswith("weight") and ".mixq." not in n]
    assert weights and all(p.grad is not None for p in weights)
    assert any(p.grad.abs().sum() > 0 for p in weights)
    alphas = qmodel.arch_parameters()
    assert alphas and all(a.grad is not None for a in alphas)
    assert sum(float(a.grad.abs().sum()) for a in alphas) > 0

    frozen = mq.freeze(qmodel)
    assert not frozen.is_mixed
    assert all(isinstance(q, FakeQuantizer) for _, q in frozen.quantizers())
    assert any(isinstance(q, MixedQuantizer) for _, q in qmodel.quantizers()), "freeze must not touch the original"
    frozen.eval()
    with torch.no_grad():
        expected = frozen(*args)
    assert torch.isfinite(expected).all()

    mq.save(frozen, tmp_path / "model")
    factory, _ = ALL[name]
    loaded = mq.load(tmp_path / "model", factory).eval()
    with torch.no_grad():
        assert torch.equal(loaded(*args), expected)
    assert loaded.chosen_bits() == frozen.chosen_bits()

    other = ALL[name][1](seed=1)
    assert other[0].shape[0] != args[0].shape[0]
    with torch.no_grad():
        assert frozen(*other).shape[0] in (other[0].shape[0], int(other[-1].max()) + 1)
