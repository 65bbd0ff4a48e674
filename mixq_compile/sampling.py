"""PyG's ``NeighborLoader`` on machines without ``pyg-lib`` or ``torch-sparse``.

PyG's neighbor sampling calls a compiled kernel from ``pyg-lib`` or ``torch-sparse``; neither has a wheel on PyPI
for this platform (pyg-lib ships from PyG's own index, torch-sparse builds from source for many minutes), so on
such a machine ``NeighborLoader`` raises ``ImportError`` at the first batch. :class:`TorchNeighborSampler` is PyG's
``NeighborSampler`` with the homogeneous, directional, uniform case of that kernel written in vectorised torch
(the loader, batching, feature filtering and ``batch_size`` slicing stay PyG's); where ``pyg-lib`` or
``torch-sparse`` is installed it defers to them. :func:`neighbor_loader` builds the loader either way and says
which sampler it used (``loader.sampler_backend``).
"""

from __future__ import annotations

import warnings

import torch
import torch_geometric.typing as pyg_typing
from torch import Tensor
from torch_geometric.loader import NeighborLoader
from torch_geometric.sampler import NeighborSampler, SamplerOutput


def compiled_sampler() -> str | None:
    """The compiled sampling library PyG would use here, or None."""
    if pyg_typing.WITH_PYG_LIB:
        return "pyg-lib"
    if pyg_typing.WITH_TORCH_SPARSE:
        return "torch-sparse"
    return None


def sample_neighbors(colptr: Tensor, row: Tensor, seed: Tensor, fanouts: list[int], replace: bool = False):
    """Uniform multi-hop neighbor sampling over a CSC graph (``colptr``, source ``row`` per edge).

    Hop ``h`` draws up to ``fanouts[h]`` in-edges of every node first reached at hop ``h`` (all of them for −1),
    without replacement unless ``replace``. Returns (global node ids, seeds first; local source ids; local target
    ids; CSC positions of the sampled edges; nodes per hop; edges per hop), the layout of PyG's ``SamplerOutput``.
    """
    num_nodes = colptr.numel() - 1
    local = torch.full((num_nodes,), -1, dtype=torch.long)
    local[seed] = torch.arange(seed.numel())
    nodes, sources, targets, positions = [seed], [], [], []
    per_hop_nodes, per_hop_edges = [seed.numel()], []
    frontier, count = seed, seed.numel()
    for fanout in fanouts:
        start = colptr[frontier]
        degree = colptr[frontier + 1] - start
        if fanout >= 0 and replace:
            draws = torch.rand(frontier.numel(), fanout)
            picked = (draws * degree.unsqueeze(1)).long()
            has = (degree > 0).unsqueeze(1).expand_as(picked)
            segment = torch.arange(frontier.numel()).unsqueeze(1).expand_as(picked)[has]
            chosen = (start.unsqueeze(1) + picked)[has]
        else:
            segment = torch.repeat_interleave(torch.arange(frontier.numel()), degree)
            offsets = torch.cumsum(degree, 0) - degree
            chosen = start[segment] + torch.arange(segment.numel()) - offsets[segment]
            if fanout >= 0:
                # random order within each target's in-edges: segments stay grouped, keys break ties randomly
                order = torch.argsort(segment.double() + torch.rand(segment.numel(), dtype=torch.double))
                chosen = chosen[order]
                keep = torch.arange(segment.numel()) - offsets[segment] < fanout
                segment, chosen = segment[keep], chosen[keep]
        source = row[chosen]
        fresh = torch.unique(source[local[source] < 0])
        local[fresh] = torch.arange(count, count + fresh.numel())
        count += fresh.numel()
        nodes.append(fresh)
        sources.append(local[source])
        targets.append(local[frontier[segment]])
        positions.append(chosen)
        per_hop_nodes.append(fresh.numel())
        per_hop_edges.append(chosen.numel())
        frontier = fresh
    cat = torch.cat
    return cat(nodes), cat(sources), cat(targets), cat(positions), per_hop_nodes, per_hop_edges


class TorchNeighborSampler(NeighborSampler):
    """PyG's ``NeighborSampler``; without pyg-lib / torch-sparse, homogeneous directional uniform sampling runs in
    torch (:func:`sample_neighbors`). Other modes (heterogeneous, temporal, weighted, disjoint, induced) still
    need a compiled library, and say so."""

    def _sample(self, seed, seed_time=None, **kwargs):
        if compiled_sampler() is not None:
            return super()._sample(seed, seed_time, **kwargs)
        unsupported = [name for name, on in (
            ("heterogeneous graphs", isinstance(seed, dict)), ("temporal sampling", seed_time is not None),
            ("weighted sampling", getattr(self, "edge_weight", None) is not None),
            ("disjoint subgraphs", self.disjoint), ("induced subgraphs", self.subgraph_type.value == "induced"),
            ("backward sampling", self.sample_direction == "backward"),
        ) if on]  # fmt: skip
        if unsupported:
            raise ImportError(
                f"neighbor sampling with {', '.join(unsupported)} needs pyg-lib or torch-sparse; mixq_compile's "
                f"torch sampler covers homogeneous, directional, uniform sampling only"
            )
        node, row, col, edge, hop_nodes, hop_edges = sample_neighbors(
            self.colptr, self.row, seed.long(), self.num_neighbors.get_mapped_values(), self.replace
        )
        return SamplerOutput(node=node, row=row, col=col, edge=edge, batch=None, num_sampled_nodes=hop_nodes,
                             num_sampled_edges=hop_edges)  # fmt: skip


def neighbor_loader(data, num_neighbors: list[int], **kwargs) -> NeighborLoader:
    """``torch_geometric.loader.NeighborLoader(data, num_neighbors, **kwargs)`` that samples on this machine
    (see the module docstring); ``loader.sampler_backend`` names the sampler."""
    sampler_options = {k: kwargs.pop(k) for k in ("replace", "subgraph_type", "disjoint") if k in kwargs}
    with warnings.catch_warnings():  # PyG warns that a sampler without pyg-lib is deprecated: this one is ours
        warnings.filterwarnings("ignore", message=".*without a 'pyg-lib' installation.*")
        sampler = TorchNeighborSampler(data, num_neighbors, **sampler_options)
    loader = NeighborLoader(data, num_neighbors, neighbor_sampler=sampler, **kwargs)
    loader.sampler_backend = compiled_sampler() or "torch (mixq_compile.sampling)"
    return loader
