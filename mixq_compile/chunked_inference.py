"""Whole-graph node-level inference in chunks of target nodes, with the integers of the full-graph program.

A model with ``hops`` message-passing layers computes the output of node ``t`` from the ``hops``-hop in-neighbourhood
of ``t``. Per-edge factors read the degree of both ends (GCN's ``1/sqrt(deg(u) deg(v))``, a mean's count, an
attention softmax's denominator), so every node that sends a message towards ``t`` needs all of *its* in-edges
too. :func:`predict_in_chunks` therefore runs the model (an artifact, the integer program or a frozen model) on
the subgraph of every in-edge of the nodes within ``hops`` hops of a chunk of targets, and keeps the targets'
rows: each target then sees exactly the values, degrees and messages it sees in the whole graph, so integer
outputs are equal to the full-graph program (sums of integers do not depend on edge order; float islands such as
an attention softmax agree to float rounding). Peak memory is bounded by the largest chunk's subgraph, not by the
graph. The rule assumes in-degree-based normalisation (PyG's default ``flow="source_to_target"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm


class InEdges:
    """The graph's edges grouped by target (CSC), for repeated "in-edges of these nodes" queries."""

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        order = torch.argsort(edge_index[1], stable=True)
        self.source, self.target = edge_index[0, order], edge_index[1, order]
        counts = torch.bincount(self.target, minlength=num_nodes)
        self.start = torch.cumsum(counts, 0) - counts
        self.count = counts

    def of(self, nodes: Tensor) -> Tensor:
        """Positions (in grouped order) of every in-edge of ``nodes``."""
        count = self.count[nodes]
        segment = torch.repeat_interleave(torch.arange(nodes.numel()), count)
        offsets = torch.cumsum(count, 0) - count
        return self.start[nodes][segment] + torch.arange(segment.numel()) - offsets[segment]


def halo_subgraph(edges: InEdges, targets: Tensor, hops: int, num_nodes: int) -> tuple[Tensor, Tensor]:
    """(global node ids, targets first; local edge_index) of the subgraph that determines ``targets`` exactly."""
    inside = torch.zeros(num_nodes, dtype=torch.bool)
    inside[targets] = True
    frontier, reached = targets, [targets]
    for _ in range(hops):
        sources = edges.source[edges.of(frontier)]
        frontier = torch.unique(sources[~inside[sources]])
        inside[frontier] = True
        reached.append(frontier)
    positions = edges.of(torch.cat(reached))  # every in-edge of every node within `hops` hops
    sources = edges.source[positions]
    outer = torch.unique(sources[~inside[sources]])  # senders one hop further: their features only
    nodes = torch.cat([*reached, outer])
    local = torch.full((num_nodes,), -1, dtype=torch.long)
    local[nodes] = torch.arange(nodes.numel())
    return nodes, torch.stack([local[sources], local[edges.target[positions]]])


@torch.no_grad()
def predict_in_chunks(
    model: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    edge_index: Tensor,
    *,
    hops: int,
    chunk_size: int = 8192,
    progress: bool = True,
) -> Tensor:
    """``model(x, edge_index)`` for every node, computed ``chunk_size`` target nodes at a time (see the module
    docstring). ``hops``: the model's number of message-passing layers (more is exact too, only slower)."""
    if hops < 1 or chunk_size < 1:
        raise ValueError(f"hops and chunk_size must be ≥ 1, got hops={hops}, chunk_size={chunk_size}")
    num_nodes = x.shape[0]
    edges = InEdges(edge_index, num_nodes)
    outputs: list[Tensor] = []
    starts = range(0, num_nodes, chunk_size)
    for start in tqdm(starts, desc="chunks", disable=not progress, leave=False):
        targets = torch.arange(start, min(start + chunk_size, num_nodes))
        nodes, local_edges = halo_subgraph(edges, targets, hops, num_nodes)
        outputs.append(model(x[nodes], local_edges)[: targets.numel()])
    return torch.cat(outputs)
