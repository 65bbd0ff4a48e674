"""The paper's GCNs as plain FP32 PyG models (inputs to ``quantize``, not hand-made quantized layers)."""

from __future__ import annotations

from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv


class PlanetoidGCN(nn.Module):
    """Table 1: dropout -> GCNConv(improved) -> ReLU -> dropout -> GCNConv(improved); no bias (MIXQ_METHOD §5.1)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = dropout
        self.conv1 = GCNConv(in_channels, hidden, improved=True, bias=False)
        self.conv2 = GCNConv(hidden, out_channels, improved=True, bias=False)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.dropout(x, self.dropout, self.training)
        x = self.conv1(x, edge_index).relu()
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


class ArxivGCN(nn.Module):
    """ogbn-arxiv (Table 1/2): 3 GCN layers, hidden 256, ReLU then batch norm between layers (§5.2)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 256, layers: int = 3) -> None:
        super().__init__()
        widths = [in_channels] + [hidden] * (layers - 1) + [out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b, improved=True) for a, b in pairwise(widths))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers - 1))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for conv, norm in zip(self.convs[:-1], self.norms):
            x = norm(conv(x, edge_index).relu())
        return self.convs[-1](x, edge_index)
