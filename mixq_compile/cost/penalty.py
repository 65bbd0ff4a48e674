"""The search penalty: a differentiable expected cost of the mixed-precision model.

Three forms, chosen by arguments of :func:`mixq_compile.penalty`:

- ``scaling="relative"`` (default): expected BitOPs (``"wa"`` convention, each site at its expected bit-width
  ``E[b] = sum_k p_k b_k``) divided by the BitOPs with every site at its highest candidate. It lies in (0, 1], so
  one λ means the same on every model and data set.
- ``scaling="paper"``: the reference's ``sum_t E[b_t] * numel(t) / 8192``, with terms of sites inside a PyG
  ``MessagePassing`` layer divided by 8192 once more (MIXQ_METHOD.md §3.1), so the paper's λ values mean what they
  meant there, quirks included. ``numel(t)`` is the size seen in the latest forward pass.
- ``budget=B``: a hinge ``relu(E[BitOPs] / B - 1)`` that is zero once the expected cost meets the budget, with
  ``B`` in BitOPs of ``budget_convention`` (``"wa"`` by default, or the reference's ``"paper"`` counting), or as a
  fraction of the all-highest-bits cost when ``0 < B <= 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant.mixed import MixedQuantizer
from .bitops import assignment_bitops, quantized_bitops

KIB_BITS = 8192.0
SCALINGS = ("relative", "paper")


def site_expected_bits(qmodel) -> dict[str, Tensor]:
    bits = {}
    for name, q in qmodel.quantizers():
        if isinstance(q, MixedQuantizer):
            bits[name] = q.expected_bits()
        else:
            bits[name] = torch.tensor(float(q.bits))
    return bits


def site_max_bits(qmodel) -> dict[str, float]:
    return {
        name: float(max(q.bit_widths) if isinstance(q, MixedQuantizer) else q.bits) for name, q in qmodel.quantizers()
    }


def expected_bitops(qmodel, convention: str = "wa") -> Tensor:
    """Differentiable expected BitOPs on the shapes recorded from the example inputs."""
    expected = site_expected_bits(qmodel)
    costs = quantized_bitops(qmodel.graph_module, qmodel.plan, qmodel.example_shapes, expected, convention)
    return sum((torch.as_tensor(c.bitops) for c in costs), torch.zeros(()))


def max_bitops(qmodel, convention: str = "wa") -> float:
    return assignment_bitops(qmodel, site_max_bits(qmodel), convention)


def budget_bitops(qmodel, budget: float, convention: str) -> float:
    """A budget in BitOPs: ``budget`` itself, or that fraction of the all-highest-bits cost when ``0 < budget <= 1``."""
    if budget <= 0:
        raise ValueError(f"budget must be positive (BitOPs, or a fraction in (0, 1]), got {budget}")
    return budget * max_bitops(qmodel, convention) if budget <= 1 else float(budget)


def paper_penalty(qmodel) -> Tensor:
    total = torch.zeros(())
    expected = site_expected_bits(qmodel)
    for site in qmodel.plan.sites:
        q = qmodel.quantizer(site.name)
        numel = getattr(q, "last_numel", 0)
        scale = KIB_BITS * (KIB_BITS if site.in_message_passing else 1.0)
        total = total + expected[site.name] * numel / scale
    return total


def compute_penalty(
    qmodel, scaling: str = "relative", budget: float | None = None, budget_convention: str = "wa"
) -> Tensor:
    if budget is not None:
        target = budget_bitops(qmodel, budget, budget_convention)
        return torch.relu(expected_bitops(qmodel, budget_convention) / target - 1.0)
    if scaling == "relative":
        return expected_bitops(qmodel) / max_bitops(qmodel)
    if scaling == "paper":
        return paper_penalty(qmodel)
    raise ValueError(f"unknown penalty scaling {scaling!r}; use one of {SCALINGS}")
