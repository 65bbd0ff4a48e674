"""Tasks: a data set, how a model on it is trained, and how its accuracy is measured — what the demo and the
``quantize`` / ``export`` / ``profile`` commands share.

A node task (Cora, CiteSeer, PubMed) is transductive full-batch training on the public split; a graph task (the TU
data sets, CSL) is mini-batch training on a fixed split (fold 0 of the stratified 10-fold split for TU, split 0 of
CSL's five). ``inputs`` is the graph (or one batch of the test graphs) that calibrates, exports and is profiled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import LoadedDataset, load_dataset, stratified_folds

#: (model, epochs, lam, lr, weight_decay, desc, budget) -> a training result with ``best_state``
Train = Callable[..., object]


@dataclass
class Task:
    """A data set with its training loop and test accuracy."""

    name: str
    kind: str  # "node" or "graph"
    num_features: int
    num_classes: int
    inputs: tuple[Tensor, ...]
    train: Train
    accuracy: Callable[[Callable], float]  # callable model/artifact -> test accuracy in [0, 1]
    validation: Callable[[Callable], float]  # the same on the validation split (model selection, the bit guard)


def load_task(name: str, root: str | None = None, *, seed: int = 0) -> Task:
    """The task of data set ``name`` (see :func:`mixq_compile.data.load_dataset` for where files come from)."""
    loaded = load_dataset(name, root)
    return node_task(loaded) if loaded.task == "node" else graph_task(loaded, seed=seed)


def node_task(loaded: LoadedDataset) -> Task:
    from .training import NodeData, train_node

    data = NodeData.from_pyg(loaded.dataset[0])

    def train(model, epochs, lam, lr, weight_decay, desc, budget=None):
        return train_node(model, data, epochs=epochs, lam=lam, lr=lr, weight_decay=weight_decay, budget=budget,
                          desc=desc)  # fmt: skip

    def on(mask: Tensor) -> Callable[[Callable], float]:
        @torch.no_grad()
        def accuracy(fn) -> float:
            pred = fn(*data.inputs).argmax(-1)
            return float((pred[mask] == data.y[mask]).float().mean())

        return accuracy

    return Task(loaded.name, "node", loaded.num_features, loaded.num_classes, data.inputs, train,
                on(data.test_mask), on(data.val_mask))  # fmt: skip


def graph_task(
    loaded: LoadedDataset,
    *,
    seed: int = 0,
    batch_size: int = 32,
    lr_scale: float = 1.0,
    weight_decay: float | None = None,
) -> Task:
    """``lr_scale`` / ``weight_decay`` adjust what callers of ``train`` pass (CSL trains at half the rate, no decay)."""
    from torch_geometric.loader import DataLoader

    from .training import train_graph

    if loaded.splits is not None:
        split = loaded.splits[0]
        indices = [split[k] for k in ("train", "val", "test")]
    else:
        labels = [int(g.y) for g in loaded.dataset]
        indices = list(stratified_folds(labels, seed=seed)[0])
    parts = [[loaded.dataset[int(i)] for i in part] for part in indices]
    fixed_decay = weight_decay
    gen = torch.Generator().manual_seed(seed)
    loaders = (DataLoader(parts[0], batch_size=batch_size, shuffle=True, generator=gen),
               DataLoader(parts[1], batch_size=64), DataLoader(parts[2], batch_size=64))  # fmt: skip
    test = next(iter(DataLoader(parts[2], batch_size=len(parts[2]))))

    def train(model, epochs, lam, lr, weight_decay, desc, budget=None):
        decay = weight_decay if fixed_decay is None else fixed_decay
        return train_graph(model, loaders, epochs=epochs, lam=lam, lr=lr * lr_scale, weight_decay=decay,
                           budget=budget, schedule="plateau", desc=desc)  # fmt: skip

    @torch.no_grad()
    def accuracy(fn) -> float:
        return float((fn(test.x, test.edge_index, test.batch).argmax(-1) == test.y).float().mean())

    @torch.no_grad()
    def validation(fn) -> float:
        correct = sum(int((fn(b.x, b.edge_index, b.batch).argmax(-1) == b.y).sum()) for b in loaders[1])
        return correct / max(len(parts[1]), 1)

    inputs = (test.x, test.edge_index, test.batch)
    return Task(loaded.name, "graph", loaded.num_features, loaded.num_classes, inputs, train, accuracy, validation)
