"""Degree-Quant's run-time pieces: protection probabilities from in-degrees, the per-step mask, and the bypass.

:func:`~mixq_compile.passes.degree_quant.insert_degree_quant` wires these into a graph; they are plain functions
and one small module so that the graph stays readable (``protect(x, quantized, mask)`` after a quantizer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def protection_probability(edge_index: Tensor, num_nodes: int, low: float, high: float) -> Tensor:
    """``low + (high - low) * CDF(deg_in(v))`` per node, with CDF the empirical in-degree distribution of the graph.

    In-degrees count ``edge_index[1]`` (targets, PyG's source-to-target flow). ``CDF(d)`` is the fraction of nodes
    with in-degree at most ``d``, so the highest in-degree gets ``high`` (as in Degree-Quant's
    ``ProbabilisticHighDegreeMask``).
    """
    in_degree = torch.bincount(edge_index[1], minlength=num_nodes)
    cdf = torch.bincount(in_degree).cumsum(0).to(torch.float32) / max(num_nodes, 1)
    return low + (high - low) * cdf[in_degree]


class DegreeQuantMask(nn.Module):
    """Samples which nodes are protected in this forward pass: Bernoulli(probability) in training, none in eval."""

    def forward(self, probability: Tensor) -> Tensor | None:
        if not self.training:
            return None
        return torch.bernoulli(probability).to(torch.bool)


def edge_mask(node_mask: Tensor | None, source: Tensor) -> Tensor | None:
    """Per-edge mask: an edge is protected when its source node is (``None`` passes through: eval mode)."""
    return None if node_mask is None else node_mask[source]


def protect(value: Tensor, quantized: Tensor, mask: Tensor | None) -> Tensor:
    """``quantized`` with the rows (dim 0) selected by ``mask`` replaced by the unquantized ``value``."""
    if mask is None:
        return quantized
    return torch.where(mask.reshape(-1, *([1] * (value.dim() - 1))), value, quantized)
