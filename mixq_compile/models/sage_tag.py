"""The paper's GraphSAGE and TAG extension models as plain FP32 PyG models (MIXQ_METHOD.md §2.2, §5.6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv, TAGConv


class SAGE(nn.Module):
    """2-layer GraphSAGE; the reference uses sum aggregation without bias."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128, aggr: str = "sum") -> None:
        super().__init__()
        self.conv1 = SAGEConv(in_channels, hidden, aggr=aggr, bias=False)
        self.conv2 = SAGEConv(hidden, out_channels, aggr=aggr, bias=False)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.dropout(self.conv1(x, edge_index).relu(), 0.5, self.training)
        return self.conv2(x, edge_index)


class TAG(nn.Module):
    """2-layer TAGConv with K=3 hops."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128, hops: int = 3) -> None:
        super().__init__()
        self.conv1 = TAGConv(in_channels, hidden, K=hops)
        self.conv2 = TAGConv(hidden, out_channels, K=hops)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.dropout(self.conv1(x, edge_index).relu(), 0.5, self.training)
        return self.conv2(x, edge_index)
