"""From a finished search to the start of QAT: the searched bit-widths on the FP32 weights, guarded.

The MixQ search picks each site's argmax width from a relaxed (mixed) model; the argmax assignment itself is
never evaluated, and one site at 2 bits (e.g. the first layer's output on Cora) can cost 10 points that QAT does
not win back. :func:`raise_collapsed_sites` evaluates the frozen argmax assignment on validation data and, while it
is more than ``max_drop`` under the reference (FP32) validation accuracy, raises by one candidate step the site
whose raise helps validation most (greedy). Each evaluation is one validation pass of a
frozen model, so the guard costs a few passes per raised site.

:func:`freeze_searched` is what the demo, the ``quantize`` command and the scale experiment run after the search:
the paper's phase C (search, then fine-tune the FP32 model at the searched bits), with the guard in between.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn

from .api import freeze, quantize
from .calibration import calibrate
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


def freeze_searched(
    fp32_model: nn.Module,
    searched: QuantizedModel,
    example_inputs: Sequence[Tensor],
    validation: Callable[[nn.Module], float] | None,
    *,
    bits: dict[str, int] | None = None,
    calibration: Iterable | None = None,
    max_drop: float = 0.01,
) -> tuple[QuantizedModel, list[str]]:
    """(the model QAT starts from, log lines): ``fp32_model`` quantized afresh, frozen at the searched bit-widths.

    The search trains weights and ranges under a softmax mixture of precisions; they fit the mixture, not the one
    assignment that is kept, and starting QAT from them costs accuracy at any width (Cora demo, 10 seeds: a frozen
    all-8-bit search model ended 1.2-2.0 points under FP32 after QAT). So the FP32 weights are quantized again,
    their ranges calibrated on the FP32 activations (of the ``calibration`` batches if given, else of
    ``example_inputs``), with the search's candidates. ``validation`` (accuracy in [0, 1] of a callable model)
    turns on the guard (:func:`raise_collapsed_sites`, reference: the FP32 model); ``bits`` replaces the searched
    argmax (e.g. the assignment :func:`~mixq_compile.fit_budget` returns, kept as given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float ops were reported when the search model was quantized
        fresh = quantize(fp32_model, example_inputs, config=searched.config)
    if calibration is not None:
        calibrate(fresh, calibration, progress=False)
    chosen = dict(bits or searched.chosen_bits())
    log: list[str] = []
    if validation is not None and bits is None:
        chosen, log = raise_collapsed_sites(fresh, validation, validation(fp32_model), max_drop=max_drop, bits=chosen)
    return freeze(fresh, chosen), log
