"""Fixed-precision fake quantizer: a small module whose bit-width and granularity are plain attributes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import grad_scale, lsq_fake_quantize, lsq_grad_factor, quantize_codes, round_ste
from .spec import QuantSpec

_MIN_SCALE = 1e-8


def _channels_first(x: Tensor, axis: int) -> Tensor:
    """``x`` reshaped to ``[C, -1]`` with the channel axis first."""
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


_MSE_GRID = 64  # candidate clipping fractions tried by range_init="mse"
_MSE_SAMPLES = 1 << 18  # values per row the MSE search looks at (evenly strided subsample above that)


def observe_range(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """The (low, high) range a quantizer of ``spec`` starts from (min/max, percentiles or the MSE-optimal clipping
    of min/max), always including zero."""
    data = x.detach().float()
    if not torch.isfinite(data).all():
        raise ValueError(
            "cannot calibrate a quantizer on a tensor with NaN or infinite values; "
            "check the model inputs and the FP32 model's outputs for non-finite values"
        )
    if spec.granularity == "channel":
        if data.dim() == 0:
            raise ValueError("per-channel quantization needs a tensor with at least one dimension")
        rows = _channels_first(data, spec.axis)
    else:
        rows = data.reshape(1, -1)
    if rows.shape[1] == 0:
        low = high = torch.zeros(rows.shape[0])
    elif spec.range_init == "percentile" and rows.shape[1] > 1:
        k_low = max(1, int(spec.percentile * rows.shape[1]))
        k_high = max(1, rows.shape[1] - k_low + 1)
        low = rows.kthvalue(k_low, dim=1).values
        high = rows.kthvalue(k_high, dim=1).values
    else:
        low, high = rows.amin(dim=1), rows.amax(dim=1)
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)
    if spec.range_init == "mse" and rows.shape[1] > 0:
        low, high = _mse_clipped_range(rows, low, high, spec)
    return low, high


def _mse_clipped_range(rows: Tensor, low: Tensor, high: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Shrink ``[low, high]`` (per row) by the fraction in ``(0, 1]`` whose quantize-dequantize error is smallest.

    Min/max wastes most of a low bit-width's levels on rare outliers: row-normalised bag-of-words features (Cora)
    have a few large values and many small ones that a 2-bit min/max grid rounds to zero. Clipping trades outlier
    error for resolution where the data is; the optimum is found by a grid search, as PTQ observers do.
    """
    if rows.shape[1] > _MSE_SAMPLES:
        rows = rows[:, :: -(-rows.shape[1] // _MSE_SAMPLES)]
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
    scale = torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale))
    if not spec.symmetric:
        zero_point = torch.clamp(torch.round(qmin - low / scale), qmin, qmax)
    return scale, zero_point


class FakeQuantizer(nn.Module):
    """Quantize-dequantize with a learnable scale and zero-point (LSQ+), calibrated on the first tensor it sees.

    The scale and zero-point are created at calibration, because per-channel shapes depend on the data; call the
    module once (``quantize()`` does this with the example inputs) before building an optimizer. The zero-point is
    kept as a float parameter for training but is always rounded (straight-through) and clamped to the code range
    before use, so the value an integer program needs is integral by construction.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.scale = nn.Parameter(torch.ones(1), requires_grad=spec.learnable)
        self.zero_point = nn.Parameter(torch.zeros(1), requires_grad=spec.learnable and not spec.symmetric)

    @property
    def bits(self) -> int:
        return self.spec.bits

    def extra_repr(self) -> str:
        s = self.spec
        sign = "signed" if s.signed else "unsigned"
        kind = "symmetric" if s.symmetric else "affine"
        gran = f"per-channel(axis={s.axis})" if s.granularity == "channel" else "per-tensor"
        return f"bits={s.bits}, {sign}, {kind}, {gran}, range_init={s.range_init}"

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Set scale and zero-point from ``x``'s range (shape per the granularity) and mark the quantizer ready."""
        low, high = observe_range(x, self.spec)
        self.calibrate_range(low.to(x.device), high.to(x.device))

    @torch.no_grad()
    def calibrate_range(self, low: Tensor, high: Tensor) -> None:
        """Set scale and zero-point so that ``[low, high]`` (per channel or scalar) maps onto the code range."""
        scale, zero_point = initial_scale_zero_point(low, high, self.spec)
        self.scale = nn.Parameter(scale, requires_grad=self.spec.learnable)
        self.zero_point = nn.Parameter(zero_point, requires_grad=self.spec.learnable and not self.spec.symmetric)
        self.initialized.fill_(True)

    def _broadcast(self, p: Tensor, x: Tensor) -> Tensor:
        if self.spec.granularity != "channel":
            return p.reshape(())
        shape = [1] * x.dim()
        shape[self.spec.axis] = -1
        return p.reshape(shape)

    def _grad_factor(self, x: Tensor) -> float:
        return lsq_grad_factor(x.numel() // max(self.scale.numel(), 1), self.spec.qmax)

    def scale_and_zero_point(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Effective (broadcastable) scale and integral zero-point used for ``x`` (composite STE form)."""
        spec = self.spec
        scale = grad_scale(self.scale, self._grad_factor(x)).abs().clamp_min(_MIN_SCALE)
        if spec.symmetric:
            zero_point = self.zero_point.detach() * 0
        else:
            zero_point = round_ste(torch.clamp(self.zero_point, spec.qmin, spec.qmax))
        return self._broadcast(scale, x), self._broadcast(zero_point, x)

    def fused_arguments(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int], float]:
        """(positive broadcast scale, unrounded broadcast zero-point, code range, LSQ gradient factor) for ``x``:
        what the fused fake-quant functions take. Calibrates on ``x`` first if this quantizer has not seen data."""
        if not bool(self.initialized):
            self.calibrate(x)
        spec = self.spec
        scale = self._broadcast(self.scale.abs().clamp_min(_MIN_SCALE), x)
        zero_point = self._broadcast(self.zero_point.detach() * 0 if spec.symmetric else self.zero_point, x)
        return scale, zero_point, (spec.qmin, spec.qmax), self._grad_factor(x)

    def forward(self, x: Tensor) -> Tensor:
        scale, zero_point, (qmin, qmax), factor = self.fused_arguments(x)
        return lsq_fake_quantize(x, scale, zero_point, qmin, qmax, factor)

    def codes(self, x: Tensor) -> Tensor:
        """Integer codes of ``x`` under this quantizer (float tensor of integral values)."""
        scale, zero_point = self.scale_and_zero_point(x)
        return quantize_codes(x, scale.detach(), zero_point.detach(), self.spec.qmin, self.spec.qmax)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-channel shapes are only known after calibration: adopt the saved shapes before loading.
        for name in ("scale", "zero_point"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if saved is not None and saved.shape != current.shape:
                setattr(self, name, nn.Parameter(torch.empty_like(saved), requires_grad=current.requires_grad))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
