"""A synthetic node-classification graph of any size, generated in memory with a fixed seed.

Planted communities (one per class) with power-law degrees: each edge leaves a node drawn in proportion to a
Pareto "activity" weight and lands, with probability ``p_inside``, on a node of the same community (else anywhere),
again in proportion to activity. Features are the class's random centroid plus Gaussian noise strong enough that
features alone classify poorly and averaging over neighbours (mostly same-class) helps: labels depend on features
and structure, as the scale benchmark needs.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data


def planted_communities(
    num_nodes: int,
    avg_degree: float = 10.0,
    *,
    classes: int = 8,
    features: int = 128,
    p_inside: float = 0.8,
    noise: float = 8.0,
    pareto_shape: float = 2.0,
    seed: int = 0,
) -> Data:
    """``Data(x, edge_index, y, train_mask, val_mask, test_mask)``: 60 / 20 / 20 % random split."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (num_nodes,), generator=gen)
    activity = (1.0 - torch.rand(num_nodes, generator=gen, dtype=torch.float64)) ** (-1.0 / pareto_shape)
    num_edges = int(num_nodes * avg_degree)
    src = torch.multinomial(activity, num_edges, replacement=True, generator=gen)
    # a target in the source's community: nodes sorted by class, drawn by activity inside the class's range
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=classes)
    starts = torch.cumsum(counts, 0) - counts
    weights = activity[order]
    cumulative = torch.cumsum(weights, 0)
    low = torch.where(starts > 0, cumulative[(starts - 1).clamp(min=0)], torch.zeros_like(starts, dtype=weights.dtype))
    high = cumulative[starts + counts - 1]
    klass = y[src]
    draw = low[klass] + torch.rand(num_edges, generator=gen, dtype=torch.float64) * (high[klass] - low[klass])
    inside = order[torch.searchsorted(cumulative, draw).clamp(max=num_nodes - 1)]
    anywhere = torch.multinomial(activity, num_edges, replacement=True, generator=gen)
    dst = torch.where(torch.rand(num_edges, generator=gen) < p_inside, inside, anywhere)
    centroids = torch.randn(classes, features, generator=gen)
    x = centroids[y] + noise * torch.randn(num_nodes, features, generator=gen)
    split = torch.rand(num_nodes, generator=gen)
    return Data(x=x, edge_index=torch.stack([src, dst]), y=y, train_mask=split < 0.6,
                val_mask=(split >= 0.6) & (split < 0.8), test_mask=split >= 0.8, num_nodes=num_nodes)  # fmt: skip
