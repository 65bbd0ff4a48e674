"""Any PyG conv, end to end: two layers of each of 25 ``torch_geometric.nn`` convs and a sum readout (and PyG's GAT
example, ELU and log_softmax included) are quantized, frozen at 8 bits and lowered; the integer program equals the
fake-quantized model, and the ONNX and TVM artifacts equal the integer program on a batch of another size (their
node, edge and graph counts are dynamic)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch_geometric.nn as pyg
from torch import nn

import mixq_compile as mq
from mixq_compile.runtimes import available_backends

from helpers import random_batch, unusual_graphs

FEATURES = 8
CONVS = {
    "GCNConv": lambda: pyg.GCNConv(FEATURES, FEATURES),
    "GATConv": lambda: pyg.GATConv(FEATURES, FEATURES, heads=2, concat=False),
    "GATv2Conv": lambda: pyg.GATv2Conv(FEATURES, FEATURES),
    "SGConv": lambda: pyg.SGConv(FEATURES, FEATURES, K=2),
    "SAGEConv": lambda: pyg.SAGEConv(FEATURES, FEATURES),
    "SAGEConv-max": lambda: pyg.SAGEConv(FEATURES, FEATURES, aggr="max"),
    "GINConv": lambda: pyg.GINConv(nn.Linear(FEATURES, FEATURES)),
    "TransformerConv": lambda: pyg.TransformerConv(FEATURES, FEATURES),
    "GraphConv": lambda: pyg.GraphConv(FEATURES, FEATURES),
    "ChebConv": lambda: pyg.ChebConv(FEATURES, FEATURES, K=2),
    "EdgeConv": lambda: pyg.EdgeConv(nn.Linear(2 * FEATURES, FEATURES)),
    "GENConv": lambda: pyg.GENConv(FEATURES, FEATURES),
    "TAGConv": lambda: pyg.TAGConv(FEATURES, FEATURES),
    "APPNP": lambda: pyg.APPNP(2, 0.1),
    "PNAConv": lambda: pyg.PNAConv(
        FEATURES, FEATURES, ["mean", "max", "std"], ["identity", "amplification"], torch.tensor([0, 2, 3, 4, 1.0])
    ),
    "ResGatedGraphConv": lambda: pyg.ResGatedGraphConv(FEATURES, FEATURES),
    "LEConv": lambda: pyg.LEConv(FEATURES, FEATURES),
    "GeneralConv": lambda: pyg.GeneralConv(FEATURES, FEATURES),
    "ARMAConv": lambda: pyg.ARMAConv(FEATURES, FEATURES),
    "ClusterGCNConv": lambda: pyg.ClusterGCNConv(FEATURES, FEATURES),
    "FeaStConv": lambda: pyg.FeaStConv(FEATURES, FEATURES),
    "MFConv": lambda: pyg.MFConv(FEATURES, FEATURES),
    "FiLMConv": lambda: pyg.FiLMConv(FEATURES, FEATURES),
    "SuperGATConv": lambda: pyg.SuperGATConv(FEATURES, FEATURES),
    "GatedGraphConv": lambda: pyg.GatedGraphConv(FEATURES, 2),
}


class TwoLayers(nn.Module):
    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1, self.conv2, self.head = make(), make(), nn.Linear(FEATURES, 2)

    def forward(self, x, edge_index, batch):
        h = self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)
        return self.head(pyg.global_add_pool(h, batch))


class GATExample(nn.Module):
    """PyG's GAT example: dropout, 8-head GATConv, ELU, dropout, 1-head GATConv, log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = pyg.GATConv(FEATURES, 4, heads=8, dropout=0.6)
        self.conv2 = pyg.GATConv(32, 3, heads=1, concat=False, dropout=0.6)

    def forward(self, x, edge_index, batch):
        x = torch.nn.functional.dropout(x, p=0.6, training=self.training)
        x = torch.nn.functional.elu(self.conv1(x, edge_index))
        x = torch.nn.functional.dropout(x, p=0.6, training=self.training)
        return torch.nn.functional.log_softmax(self.conv2(x, edge_index), dim=1)


MODELS = {name: (lambda make=make: TwoLayers(make)) for name, make in CONVS.items()} | {"GAT-example": GATExample}


@pytest.mark.slow
@pytest.mark.parametrize("conv", sorted(MODELS))
def test_conv_lowers_exactly_and_deploys_on_onnx_and_tvm(conv, tmp_path):
    example, other = random_batch(4, 6, FEATURES), random_batch(7, 9, FEATURES, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(MODELS[conv]().eval(), example)
        qmodel(*example)  # calibrate
        frozen = mq.freeze(qmodel).eval()
        program = mq.lower(frozen)
        with torch.no_grad():
            expected = program(*other)
            # outputs dequantized from int32 accumulators: the fake-quant graph sums the same values in float
            torch.testing.assert_close(expected, frozen(*other))
        usable, _ = available_backends(["onnx", "tvm"])  # TVM is an extra; its own tests skip with the reason
        for _, backend, _ in usable:
            artifact = mq.load_artifact(mq.export(frozen, example, tmp_path / backend, backend=backend))
            torch.testing.assert_close(artifact(*other), expected, rtol=0, atol=1e-6, msg=f"{conv} on {backend}")
            for label, inputs in unusual_graphs(*other).items():
                with torch.no_grad():
                    reference = program(*inputs)
                torch.testing.assert_close(artifact(*inputs), reference, rtol=1e-6, atol=1e-6,
                                           msg=f"{conv} on {backend}, {label} graph")  # fmt: skip
