"""Range observers: a quantizer's statistics accumulated over calibration batches, turned into its initial range.

Calibration must see more than one graph: a range taken from one small graph misses what another graph of the same
distribution shows (an isolated node, a higher in-degree). A :class:`RangeObserver` therefore accumulates, batch by
batch, what its spec's ``range_init`` needs, and :meth:`RangeObserver.range` turns it into ``(low, high)`` once:

- ``"minmax"``: running min/max over every batch;
- ``"moving_average"``: per-batch min/max averaged with ``spec.averaging_constant`` (torch's
  ``MovingAverageMinMaxObserver``: an outlier batch moves the range only part of the way);
- ``"percentile"`` and ``"mse"``: a subsample of the values of every batch (each batch decimated by the same stride,
  at most ``_SAMPLES`` values per row in all), on which the percentiles or the MSE grid search run at the end; the
  MSE search starts from the running min/max.

Every range includes zero. At ``BOUNDS_FROM_BITS`` bits and above, where resolution is cheap and a clipped extreme
is not, a range inside ``spec.bounds`` is widened to the bound on each side its data reaches, and otherwise a range
observed over ``n`` batches reaches ``spec.tail_margin / n`` times past its most extreme batch (see
:class:`~mixq_compile.quant.spec.QuantSpec` and :func:`_tail_extended`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import quantize_codes
from .spec import BOUNDS_FROM_BITS, QuantSpec

MIN_SCALE = 1e-8
_MSE_GRID = 64  # candidate clipping fractions tried by range_init="mse"
_SAMPLES = 1 << 18  # values per row kept for the percentile and MSE rules


def _channels_first(x: Tensor, axis: int) -> Tensor:
    """``x`` reshaped to ``[C, -1]`` with the channel axis first."""
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class RangeObserver:
    """Statistics of the tensors one quantizer sees during calibration (per row: channel or whole tensor)."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.batches = 0
        self.low: Tensor | None = None  # running (or moving-average) min per row
        self.high: Tensor | None = None
        self.sample: Tensor | None = None  # [rows, kept values] for the percentile and MSE rules
        self.stride = 1
        self.empty_rows: int | None = None  # rows of the empty tensors seen (a degree bucket no node has)
        self.low_sum: Tensor | None = None  # sums of the per-batch extremes, for the tail margin
        self.high_sum: Tensor | None = None

    def _rows(self, x: Tensor) -> Tensor:
        data = x.detach().float()
        if not torch.isfinite(data).all():
            raise ValueError(
                "cannot calibrate a quantizer on a tensor with NaN or infinite values; "
                "check the model inputs and the FP32 model's outputs for non-finite values"
            )
        if self.spec.granularity == "tensor":
            return data.reshape(1, -1)
        if data.dim() == 0:
            raise ValueError("per-channel quantization needs a tensor with at least one dimension")
        rows = _channels_first(data, self.spec.axis)
        if self.low is not None and rows.shape[0] != self.low.shape[0]:
            raise ValueError(
                f"per-channel quantizer saw {rows.shape[0]} channels in one batch and {self.low.shape[0]} in another"
            )
        return rows

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold one tensor into the statistics."""
        rows = self._rows(x)
        if rows.shape[1] == 0:
            self.empty_rows = rows.shape[0]
            return
        low, high = rows.amin(dim=1), rows.amax(dim=1)
        if self.low_sum is None or self.high_sum is None:
            self.low_sum, self.high_sum = low.clone(), high.clone()
        else:
            self.low_sum, self.high_sum = self.low_sum + low, self.high_sum + high
        if self.low is None or self.high is None:
            self.low, self.high = low, high
        elif self.spec.range_init == "moving_average":
            c = self.spec.averaging_constant
            self.low, self.high = self.low + c * (low - self.low), self.high + c * (high - self.high)
        else:
            self.low, self.high = torch.minimum(self.low, low), torch.maximum(self.high, high)
        if self.spec.range_init in ("percentile", "mse"):
            self._keep(rows)
        self.batches += 1

    def _keep(self, rows: Tensor) -> None:
        kept = rows[:, :: self.stride]
        self.sample = kept if self.sample is None else torch.cat([self.sample, kept], dim=1)
        while self.sample.shape[1] > _SAMPLES:  # halve the density of everything kept so far, and of what follows
            self.sample = self.sample[:, ::2]
            self.stride *= 2

    def range(self) -> tuple[Tensor, Tensor]:
        """The ``(low, high)`` range (per row) the accumulated statistics give, per the spec; zero included."""
        if self.low is None or self.high is None:
            if self.empty_rows is None:
                raise ValueError("the observer has seen no tensor: calibrate on at least one")
            return torch.zeros(self.empty_rows), torch.zeros(self.empty_rows)  # nothing to cover but zero
        spec = self.spec
        low, high = self.low, self.high
        if spec.range_init == "percentile" and self.sample is not None and self.sample.shape[1] > 1:
            low, high = _percentiles(self.sample, spec.percentile)
        low, high = low.clamp(max=0.0), high.clamp(min=0.0)
        if spec.range_init == "mse" and self.sample is not None:
            low, high = _mse_clipped_range(self.sample, low, high, spec)
        if spec.bits < BOUNDS_FROM_BITS:
            return low, high
        inside = torch.zeros_like(low, dtype=torch.bool)
        if spec.bounds is not None:
            inside = (self.low >= spec.bounds[0]) & (self.high <= spec.bounds[1])
            low, high = _widened_to_bounds(low, high, spec.bounds, inside)
        if spec.tail_margin and spec.range_init in ("minmax", "mse") and self.batches > 1:
            extended_low, extended_high = self._tail_extended(spec.tail_margin)
            low = torch.where(inside, low, torch.minimum(low, extended_low))
            high = torch.where(inside, high, torch.maximum(high, extended_high))
        return low, high

    def _tail_extended(self, margin: float) -> tuple[Tensor, Tensor]:
        """The observed extremes pushed ``margin / n`` times past the mean of the ``n`` per-batch extremes.

        The most extreme of ``n`` batches says little about the next graph: a graph of the same distribution not
        calibrated on reaches past it as often as the calibration graphs reached past each other (a node of higher
        in-degree, a sharper attention score). The spread of the per-batch extremes measures how far that goes, and
        ``1 / n`` how likely it is: the next of ``n + 1`` exchangeable graphs holds the largest extreme with
        probability ``1 / (n + 1)``, so the more batches, the less the range needs past their maximum. 8-bit PTQ of
        the 37 models of ``experiments/ptq_error.py``, mean relative L2 over 8 held-out graphs, calibrated on 4 / 8
        / 16 / 32 random graphs: 0.0194 / 0.0179 / 0.0176 / 0.0171 with ``margin / n`` (``margin`` 6), where a
        margin that does not shrink with ``n`` (1.5) gave 0.0194 / 0.0185 / 0.0194 / 0.0204 (more calibration data
        made the ranges coarser), ``3 / sqrt(n)`` 0.0194 / 0.0178 / 0.0178 / 0.0177, and none (the MSE range)
        0.0248 / - / 0.0184 / 0.0169. At 4 batches, margins 4 / 6 / 8 / 12 gave 0.0205 / 0.0198 / 0.0197 / 0.0205
        over 10 held-out graphs of 24 models (wider ranges cost resolution everywhere they were not needed).
        """
        assert self.low is not None and self.high is not None and self.low_sum is not None and self.high_sum is not None
        push = margin / self.batches
        low = self.low + push * (self.low - self.low_sum / self.batches)
        high = self.high + push * (self.high - self.high_sum / self.batches)
        return low.clamp(max=0.0), high.clamp(min=0.0)


def observe_range(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """The (low, high) range a quantizer of ``spec`` starts from when calibrated on the one tensor ``x``."""
    observer = RangeObserver(spec)
    observer.update(x)
    return observer.range()


def _percentiles(rows: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    k_low = max(1, int(fraction * rows.shape[1]))
    k_high = max(1, rows.shape[1] - k_low + 1)
    return rows.kthvalue(k_low, dim=1).values, rows.kthvalue(k_high, dim=1).values


def _widened_to_bounds(low: Tensor, high: Tensor, bounds: tuple[float, float], inside: Tensor) -> tuple[Tensor, Tensor]:
    """``[low, high]`` widened to ``bounds`` on each side the data reaches, where the data lie within ``bounds``
    (``inside``, per row).

    A value known to lie in ``bounds`` (a normalisation coefficient, an attention weight) reaches them on graphs the
    calibration graph does not resemble (an isolated node gets the coefficient 1); at high bit-widths covering the
    bound costs less resolution than clipping it costs accuracy. Data outside ``bounds`` disprove the assumption,
    and the observed range is kept.
    """
    lower, upper = bounds
    low = torch.where(inside & (low < 0), torch.full_like(low, lower), low)
    high = torch.where(inside & (high > 0), torch.full_like(high, upper), high)
    return low, high


def _mse_clipped_range(rows: Tensor, low: Tensor, high: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Shrink ``[low, high]`` (per row) by the fraction in ``(0, 1]`` whose quantize-dequantize error is smallest.

    Min/max wastes most of a low bit-width's levels on rare outliers: row-normalised bag-of-words features (Cora)
    have a few large values and many small ones that a 2-bit min/max grid rounds to zero. Clipping trades outlier
    error for resolution where the data is; the optimum is found by a grid search, as PTQ observers do.
    """
    best_err = torch.full((rows.shape[0],), float("inf"), device=rows.device)
    best = torch.ones(rows.shape[0], device=rows.device)
    for fraction in torch.linspace(1.0 / _MSE_GRID, 1.0, _MSE_GRID).tolist():
        scale, zero_point = initial_scale_zero_point(low * fraction, high * fraction, spec)
        scale, zero_point = scale[:, None], zero_point[:, None]
        restored = (quantize_codes(rows, scale, zero_point, spec.qmin, spec.qmax) - zero_point) * scale
        err = (restored - rows).square().mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, fraction), best)
    return low * best, high * best


def initial_scale_zero_point(low: Tensor, high: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and integer zero-point that map ``[low, high]`` onto ``[qmin, qmax]``."""
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        magnitude = torch.maximum(low.abs(), high)
        positive_levels = qmax if qmax > 0 else -qmin
        scale = magnitude / positive_levels
        zero_point = torch.zeros_like(scale)
    else:
        scale = (high - low) / (qmax - qmin)
        zero_point = torch.zeros_like(scale)
    scale = torch.where(scale > MIN_SCALE, scale, torch.ones_like(scale))
    if not spec.symmetric:
        zero_point = torch.clamp(torch.round(qmin - low / scale), qmin, qmax)
    return scale, zero_point
