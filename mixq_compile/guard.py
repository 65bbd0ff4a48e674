"""A guard against a collapsed search: raise the sites whose narrow choice costs validation accuracy, before QAT.

The MixQ search picks each site's argmax width from a relaxed (mixed) model; the argmax assignment itself is
never evaluated, and one site at 2 bits (e.g. the first layer's output on Cora) can cost 10 points that QAT does
not win back. :func:`raise_collapsed_sites` evaluates the frozen argmax assignment on validation data and, while it
is more than ``max_drop`` under the reference (FP32) validation accuracy, raises by one candidate step the site
whose raise helps validation most (greedy). Each evaluation is one validation pass of a
frozen model, so the guard costs a few passes per raised site.
"""

from __future__ import annotations

from collections.abc import Callable

from .api import freeze
from .quantized_model import QuantizedModel


def raise_collapsed_sites(
    qmodel: QuantizedModel,
    validation: Callable[[QuantizedModel], float],
    reference: float,
    *,
    max_drop: float = 0.01,
    bits: dict[str, int] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """(bits to freeze at, log lines). ``validation(frozen)`` returns an accuracy in [0, 1]; ``reference`` is the
    FP32 model's; ``bits`` starts from a given assignment instead of the argmax."""
    current = dict(bits or qmodel.chosen_bits())
    candidates = {name: sorted(q.bit_widths) for name, q in qmodel.quantizers() if hasattr(q, "bit_widths")}
    score = validation(freeze(qmodel, current).eval())
    log = [f"argmax assignment: validation {score * 100:.2f} (FP32 {reference * 100:.2f})"]
    while reference - score > max_drop:
        best: tuple[float, str, int] | None = None
        for name, widths in candidates.items():
            wider = [b for b in widths if b > current[name]]
            if not wider:
                continue
            trial = {**current, name: wider[0]}
            value = validation(freeze(qmodel, trial).eval())
            if best is None or value > best[0]:
                best = (value, name, wider[0])
        if best is None:
            break
        score, name, width = best
        log.append(f"raised {name} {current[name]} -> {width} bits: validation {score * 100:.2f}")
        current[name] = width
    return current, log
