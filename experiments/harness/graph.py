"""Graph-classification protocols (TUDataset GIN §5.4, CSL §5.5) through the public pipeline.

Phases are small functions so the TU and CSL experiments compose them differently: TU's MixQ does search → QAT
from scratch, CSL's does search → FP32 → QAT from the FP32 weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch_geometric.loader import DataLoader

import mixq_compile as mq
from experiments.harness.common import quantize
from mixq_compile.training import GraphTrainResult, train_graph

Loaders = tuple[DataLoader, DataLoader, DataLoader]


def loaders(dataset, split: Sequence, batch_size: int, seed: int) -> Loaders:
    """Train (shuffled with a seeded generator), val and test loaders from index arrays (train, val, test)."""
    train, val, test = ([dataset[int(i)] for i in idx] for idx in split)
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(val, batch_size=batch_size),
        DataLoader(test, batch_size=batch_size),
    )


def example_inputs(loader: DataLoader) -> tuple[torch.Tensor, ...]:
    """The first training batch: what the reference counts BitOPs on and what calibrates the quantizers."""
    batch = next(iter(loader))
    return batch.x, batch.edge_index, batch.batch


def fit(model: nn.Module, data: Loaders, train: dict[str, Any], **extra: Any) -> GraphTrainResult:
    """``train_graph`` with the protocol's optimiser settings; loads the best state back into ``model``."""
    result = train_graph(model, data, progress=False, **train, **extra)
    model.load_state_dict(result.best_state)
    return result


def search_bits(
    make_model: Callable[[], nn.Module],
    data: Loaders,
    candidates: Sequence[int],
    lam: float,
    train: dict[str, Any],
    range_init: str | None = None,
) -> dict[str, int]:
    """MixQ search from scratch; bits of the lowest-val-loss (λ-penalised) relaxed state."""
    qmodel = quantize(make_model(), example_inputs(data[0]), candidates, range_init=range_init)
    fit(qmodel, data, train, lam=lam, penalty_scaling="paper", desc="search")
    return qmodel.chosen_bits()


def qat(
    model: nn.Module,
    data: Loaders,
    candidates: Sequence[int],
    bits: dict[str, int],
    train: dict[str, Any],
    range_init: str | None = None,
):
    """Quantize ``model`` (fresh or FP32-trained), fix ``bits`` and train; returns the frozen model and result."""
    frozen = mq.freeze(quantize(model, example_inputs(data[0]), candidates, range_init=range_init), bits=bits)
    return frozen, fit(frozen, data, train, desc="QAT")


def uniform_bits(make_model: Callable[[], nn.Module], data: Loaders, candidates: Sequence[int], bits: int):
    """Every site at ``bits``: the site names come from quantizing a throwaway copy."""
    sites = quantize(make_model(), example_inputs(data[0]), candidates).chosen_bits()
    return dict.fromkeys(sites, bits)
