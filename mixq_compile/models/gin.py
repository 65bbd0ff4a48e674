"""The paper's TUDataset GIN as a plain FP32 PyG model (MIXQ_METHOD.md §2.2, §5.4)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GINConv, global_max_pool


class TUGIN(nn.Module):
    """5 x GINConv(MLP: Linear -> ReLU -> Linear -> ReLU) -> BatchNorm, global max pool, head 64 -> 64 -> C.

    Unlike the reference (which drops it), GINConv keeps its ``(1 + eps) * x_i`` self term: this is the standard
    GIN, and ``quantize`` handles it like any other op.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, layers: int = 5) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(layers):
            mlp = nn.Sequential(
                nn.Linear(in_channels if i == 0 else hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
            )
            self.convs.append(GINConv(mlp))
            self.norms.append(nn.BatchNorm1d(hidden))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = norm(conv(x, edge_index))
        return self.head(global_max_pool(x, batch))
