"""Fit a searched bit assignment under a hard BitOPs budget.

The budget penalty (:func:`mixq_compile.cost.penalty.compute_penalty`) bounds the *expected* cost of the relaxed
model, a mix of candidates; the argmax assignment read out after the search can land slightly above it (measured on
Cora at the paper's λ = 1 budget: 1 run in 10 at 1.677 for a 1.676 GBitOPs budget). :func:`fit_budget` turns the
budget into a guarantee: while the assignment costs more than the budget, it lowers the site whose next-lower
candidate gives up the least logit per BitOP saved, i.e. the cheapest step by the search's own preferences.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..quant.mixed import MixedQuantizer
from .bitops import assignment_bitops, check_convention
from .penalty import budget_bitops


def fit_budget(qmodel, budget: float, convention: str = "wa", bits: Mapping[str, int] | None = None) -> dict[str, int]:
    """``bits`` (default: the argmax of every site) lowered step by step until it costs at most ``budget`` BitOPs
    (or that fraction of the all-highest-bits cost when ``0 < budget <= 1``, as in the budget penalty).

    Only mixed sites move, one candidate down at a time. Raises ``ValueError`` when even the lowest candidates
    exceed the budget (the message gives that minimum).
    """
    check_convention(convention)
    budget = budget_bitops(qmodel, budget, convention)
    chosen = dict(qmodel.chosen_bits() if bits is None else bits)
    mixed = {name: q for name, q in qmodel.quantizers() if isinstance(q, MixedQuantizer)}
    cost = assignment_bitops(qmodel, chosen, convention)
    while cost > budget:
        best = None
        for name, q in mixed.items():
            lower = [b for b in q.bit_widths if b < chosen[name]]
            if not lower:
                continue
            step = max(lower)
            saved = cost - assignment_bitops(qmodel, chosen | {name: step}, convention)
            if saved <= 0:
                continue  # e.g. edge-weight bits, which no BitOPs convention counts
            logits = q.alpha.detach()
            given_up = float(logits[q.bit_widths.index(chosen[name])] - logits[q.bit_widths.index(step)])
            score = given_up / saved
            if best is None or score < best[0]:
                best = (score, name, step)
        if best is None:
            lowest = {name: min(q.bit_widths) if name in mixed else b for name, b in chosen.items()}
            minimum = assignment_bitops(qmodel, lowest, convention)
            raise ValueError(
                f"a budget of {budget:.4g} BitOPs ({convention}) is below the cheapest assignment of this model "
                f"({minimum:.4g}); raise the budget or add lower candidate bit-widths"
            )
        chosen[best[1]] = best[2]
        cost = assignment_bitops(qmodel, chosen, convention)
    return chosen
