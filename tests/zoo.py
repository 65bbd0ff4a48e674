"""The model zoo of the suite: unmodified FP32 PyG models (node- and graph-level, PyG's own models, a user-written
MessagePassing layer) with inputs, and the zoo models frozen at random bits and lowered, cached per name."""

from __future__ import annotations

import random
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, GraphConv, MessagePassing, SAGEConv, TAGConv, global_add_pool
from torch_geometric.nn import models as pyg_models

import mixq_compile as mq
from mixq_compile.models import CSLGCN, SAGE, TAG, TUGIN, ArxivGCN, PlanetoidGCN

from helpers import random_batch, random_graph

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


def frozen_at_random_bits(name: str, seed: int = 0):
    """Zoo model ``name`` quantized on its inputs and frozen with a random width from {2, 4, 8} per site."""
    factory, inputs = ALL[name]
    torch.manual_seed(seed)
    model = factory().eval()
    args = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args, (2, 4, 8))
    rng = random.Random(seed)
    bits = {site: rng.choice((2, 4, 8)) for site in qmodel.chosen_bits()}
    return mq.freeze(qmodel, bits).eval(), args, inputs


_PROGRAMS: dict[str, tuple] = {}


def lowered(name: str):
    """(frozen model, integer program) of zoo model ``name`` at random bits (seed 0), built once per session."""
    if name not in _PROGRAMS:
        frozen, _, _ = frozen_at_random_bits(name)
        _PROGRAMS[name] = (frozen, mq.lower(frozen))
    return _PROGRAMS[name]
