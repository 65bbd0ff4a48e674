"""Mini-batch training over sampled subgraphs: FP32, the MixQ search and QAT on graphs too big for one pass.

A model is quantized on one sampled subgraph (``mq.quantize(model, (batch.x, batch.edge_index))``; its node and
edge counts are dynamic), its ranges are calibrated over several (``mq.calibrate(qmodel, islice(loader, 8))``:
PyG batches are read by the forward's argument names), and it is then trained on every other batch of a PyG
``NeighborLoader``
(:func:`mixq_compile.sampling.neighbor_loader`): the loss reads the first ``batch.batch_size`` rows (the seed
nodes). Degree-Quant protection, where enabled, uses the in-degrees of the sampled subgraph.

Every epoch is checkpointed (model, optimizer, best state) atomically when ``checkpoint`` is given, and a run
started again with the same path resumes after the last finished epoch. Under ``torch.distributed`` (DDP, e.g.
gloo on CPU via ``torchrun``) each rank trains on its own loader (shard the seed nodes with :func:`shard`) and
gradients, including the bit-width logits and quantizer scales, are averaged like any weight, so every rank ends
with the same parameters and freezes the same bits.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .api import penalty
from .quantized_model import QuantizedModel


def node_inputs(batch) -> tuple[Tensor, Tensor]:
    """The model inputs of a sampled batch: ``(x, edge_index)``."""
    return batch.x, batch.edge_index


@dataclass
class SampledResult:
    best_val: float
    best_epoch: int
    best_state: dict
    last_loss: float


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def shard(nodes: Tensor) -> Tensor:
    """This rank's share of ``nodes`` (every ``world_size``-th, starting at its rank); all of them alone."""
    if not _distributed():
        return nodes
    return nodes[dist.get_rank() :: dist.get_world_size()]


@torch.no_grad()
def evaluate_sampled(model: nn.Module, loader: Iterable, inputs: Callable = node_inputs) -> float:
    """Accuracy on the seed nodes of every batch (summed over ranks under torch.distributed)."""
    model.eval()
    correct = total = 0
    for batch in loader:
        out = model(*inputs(batch))[: batch.batch_size]
        correct += int((out.argmax(-1) == batch.y[: batch.batch_size]).sum())
        total += batch.batch_size
    if _distributed():
        counts = torch.tensor([correct, total], dtype=torch.float64)
        dist.all_reduce(counts)
        correct, total = int(counts[0]), int(counts[1])
    return correct / max(total, 1)


def train_sampled(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    lam: float = 0.0,
    budget: float | None = None,
    penalty_scaling: str = "relative",
    inputs: Callable = node_inputs,
    checkpoint: str | os.PathLike | None = None,
    desc: str = "train",
    progress: bool = True,
) -> SampledResult:
    """Adam on cross-entropy over the seed nodes of each batch (+ ``lam``·penalty while a mixed model searches);
    keeps the best-validation state (the last state without ``val_loader``). See the module docstring for
    checkpoints and torch.distributed."""
    searching = isinstance(model, QuantizedModel) and model.is_mixed and (lam != 0.0 or budget is not None)
    trained = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    state = _resume(checkpoint, model, optimizer)
    best = SampledResult(**state["best"]) if "best" in state else SampledResult(-1.0, -1, {}, float("nan"))
    rank0 = not _distributed() or dist.get_rank() == 0
    bar = tqdm(range(state.get("epoch", -1) + 1, epochs), desc=desc, disable=not (progress and rank0), leave=False)
    for epoch in bar:
        trained.train()
        total, batches = 0.0, 0
        for batch in train_loader:
            optimizer.zero_grad()
            out = trained(*inputs(batch))[: batch.batch_size]
            loss = F.cross_entropy(out, batch.y[: batch.batch_size])
            if searching:
                loss = loss + lam * penalty(model, scaling=penalty_scaling, budget=budget)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        last = total / max(batches, 1)
        if val_loader is not None:
            val = evaluate_sampled(model, val_loader, inputs)
            if val > best.best_val:
                best = SampledResult(val, epoch, copy.deepcopy(model.state_dict()), last)
            bar.set_postfix(loss=f"{last:.3f}", val=f"{val:.3f}")
        else:
            best = SampledResult(float("nan"), epoch, copy.deepcopy(model.state_dict()), last)
            bar.set_postfix(loss=f"{last:.3f}")
        if checkpoint is not None and rank0:
            _save(checkpoint, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "best": asdict(best)})  # fmt: skip
    return best


def _resume(checkpoint, model: nn.Module, optimizer) -> dict:
    if checkpoint is None or not Path(checkpoint).is_file():
        return {}
    saved = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return saved


def _save(path: str | os.PathLike, state: dict) -> None:
    target = Path(path)
    staging = target.with_name(f".{target.name}.tmp")
    torch.save(state, staging)
    staging.replace(target)
