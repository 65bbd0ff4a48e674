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
from .cost.latency import LatencyTable
from .quantized_model import QuantizedModel


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
    budget_convention: str = "wa",
    latency: LatencyTable | None = None,
    budget_ms: float | None = None,
    desc: str = "train",
    progress: bool = True,
    track_best: bool = True,
) -> TrainResult:
    """Adam on cross-entropy over the train mask (+ ``lam * penalty`` for a mixed model); keeps the best-val state.

    The penalty is the expected BitOPs (``penalty_scaling``, ``budget``), or with ``latency`` (a table from
    :func:`mixq_compile.latency_table`) the expected measured latency (``budget_ms``: its hinge form).

    The test accuracy reported is the one at the first epoch with the best validation accuracy. With
    ``track_best=False`` nothing is evaluated and the last state is returned (the MixQ search only needs the final
    bit-widths, and evaluating the three-candidate model every epoch costs about a third of the search).
    """
    limited = budget is not None or budget_ms is not None
    searching = isinstance(model, QuantizedModel) and model.is_mixed and (lam != 0.0 or limited)
    if latency is not None:
        options = {"cost": "latency", "latency": latency, "budget_ms": budget_ms}
    else:
        options = {"scaling": penalty_scaling, "budget": budget, "budget_convention": budget_convention}
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = TrainResult(-1.0, 0.0, -1, copy.deepcopy(model.state_dict()))
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        optimizer.zero_grad()
        out = model(*data.inputs)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        if searching:
            loss = loss + lam * penalty(model, **options)
        loss.backward()
        optimizer.step()
        if not track_best:
            continue
        _, val, test = accuracies(model, data)
        if val > best.best_val:
            best = TrainResult(val, test, epoch, copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val:.3f}", test=f"{test:.3f}")
    if not track_best:
        return TrainResult(float("nan"), float("nan"), epochs - 1, copy.deepcopy(model.state_dict()))
    return best


@dataclass
class GraphTrainResult:
    best_val_loss: float
    val_acc: float
    test_at_best_val: float
    best_epoch: int
    best_state: dict


@torch.no_grad()
def evaluate_graphs(model: nn.Module, loader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a graph classifier over a loader of PyG batches."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for batch in loader:
        out = model(batch.x, batch.edge_index, batch.batch)
        loss += float(F.cross_entropy(out, batch.y, reduction="sum"))
        correct += int((out.argmax(-1) == batch.y).sum())
        count += int(batch.y.numel())
    return loss / max(count, 1), correct / max(count, 1)


def train_graph(
    model: nn.Module,
    loaders: tuple,
    *,
    epochs: int,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    lam: float = 0.0,
    penalty_scaling: str = "relative",
    budget: float | None = None,
    budget_convention: str = "wa",
    schedule: str | None = None,
    step_size: int = 25,
    gamma: float = 0.5,
    desc: str = "train",
    progress: bool = True,
) -> GraphTrainResult:
    """Mini-batch graph classification (train, val, test loaders); keeps a deep copy of the lowest-val-loss state.

    ``schedule``: ``"step"`` (StepLR, the TU protocol), ``"plateau"`` (ReduceLROnPlateau on val loss, factor 0.5,
    patience 5, min lr 1e-6: the CSL protocol) or None. While searching, the selection loss includes λ·penalty (as in
    the reference's TU search). ``budget``: the hinge form of the penalty, as in :func:`train_node`.
    """
    train_loader, val_loader, test_loader = loaders
    searching = isinstance(model, QuantizedModel) and model.is_mixed and (lam != 0.0 or budget is not None)

    def cost() -> Tensor:
        return penalty(model, scaling=penalty_scaling, budget=budget, budget_convention=budget_convention)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    elif schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=5, min_lr=1e-6)
    elif schedule is None:
        scheduler = None
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'step', 'plateau' or None")
    best = GraphTrainResult(float("inf"), 0.0, 0.0, -1, copy.deepcopy(model.state_dict()))
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        for batch in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(batch.x, batch.edge_index, batch.batch), batch.y)
            if searching:
                loss = loss + lam * cost()
            loss.backward()
            optimizer.step()
        val_loss, val_acc = evaluate_graphs(model, val_loader)
        if searching:
            val_loss += lam * float(cost().detach())
        if scheduler is not None:
            scheduler.step(val_loss) if schedule == "plateau" else scheduler.step()
        if val_loss < best.best_val_loss:
            _, test_acc = evaluate_graphs(model, test_loader)
            best = GraphTrainResult(val_loss, val_acc, test_acc, epoch, copy.deepcopy(model.state_dict()))
        bar.set_postfix(val_loss=f"{val_loss:.3f}", val=f"{val_acc:.3f}")
    return best
