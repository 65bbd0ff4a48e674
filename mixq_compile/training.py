"""Small, honest training loops for transductive node classification: search, FP training and QAT.

Checkpoints are real deep copies of the best-validation state (the reference's ``state_dict().copy()`` aliased
the live weights, MIXQ_METHOD.md §5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .api import penalty
from .model import QuantizedModel


@dataclass
class NodeData:
    """Full-batch node classification data: features, edges, labels and boolean split masks."""

    x: Tensor
    edge_index: Tensor
    y: Tensor
    train_mask: Tensor
    val_mask: Tensor
    test_mask: Tensor

    @classmethod
    def from_pyg(cls, data) -> NodeData:
        return cls(data.x, data.edge_index, data.y, data.train_mask, data.val_mask, data.test_mask)

    @property
    def inputs(self) -> tuple[Tensor, Tensor]:
        return self.x, self.edge_index


@dataclass
class TrainResult:
    best_val: float
    test_at_best_val: float
    best_epoch: int
    best_state: dict


@torch.no_grad()
def accuracies(model: nn.Module, data: NodeData) -> tuple[float, float, float]:
    model.eval()
    pred = model(*data.inputs).argmax(-1)
    return tuple(float((pred[m] == data.y[m]).float().mean()) for m in (data.train_mask, data.val_mask, data.test_mask))


def train_node(
    model: nn.Module,
    data: NodeData,
    *,
    epochs: int,
    lr: float = 0.01,
    weight_decay: float = 2e-4,
    lam: float = 0.0,
    penalty_scaling: str = "relative",
    budget: float | None = None,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    """Adam on cross-entropy over the train mask (+ ``lam * penalty`` for a mixed model); keeps the best-val state.

    The test accuracy reported is the one at the first epoch with the best validation accuracy.
    """
    searching = isinstance(model, QuantizedModel) and model.is_mixed and (lam != 0.0 or budget is not None)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = TrainResult(-1.0, 0.0, -1, copy.deepcopy(model.state_dict()))
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        optimizer.zero_grad()
        out = model(*data.inputs)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        if searching:
            loss = loss + lam * penalty(model, scaling=penalty_scaling, budget=budget)
        loss.backward()
        optimizer.step()
        _, val, test = accuracies(model, data)
        if val > best.best_val:
            best = TrainResult(val, test, epoch, copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val:.3f}", test=f"{test:.3f}")
    return best
