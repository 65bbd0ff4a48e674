"""The paper's CSL model as a plain FP32 PyG model (MIXQ_METHOD.md §5.5)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_mean_pool


class CSLGCN(nn.Module):
    """Linear(50 -> 150) -> 4 x [GCNConv -> BatchNorm -> ReLU -> residual add] -> mean pool -> 150 -> 75 -> 37 -> 10."""

    def __init__(self, in_channels: int = 50, out_channels: int = 10, hidden: int = 150, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(in_channels, hidden)
        self.convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers))
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, hidden // 4),
            nn.ReLU(),
            nn.Linear(hidden // 4, out_channels),
        )

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        h = self.embed(x)
        for conv, norm in zip(self.convs, self.norms):
            h = h + norm(conv(h, edge_index)).relu()
        return self.head(global_mean_pool(h, batch))
