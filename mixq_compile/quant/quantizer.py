"""Fixed-precision fake quantizer: a small module whose bit-width and granularity are plain attributes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import grad_scale, lsq_fake_quantize, lsq_grad_factor, quantize_codes, round_ste
from .observer import MIN_SCALE, RangeObserver, initial_scale_zero_point, observe_range
from .spec import QuantSpec


class FakeQuantizer(nn.Module):
    """Quantize-dequantize with a learnable scale and zero-point (LSQ+), calibrated on the first tensor it sees.

    The scale and zero-point are created at calibration, because per-channel shapes depend on the data; call the
    module once (``quantize()`` does this with the example inputs) before building an optimizer. The zero-point is
    kept as a float parameter for training but is always rounded (straight-through) and clamped to the code range
    before use, so the value an integer program needs is integral by construction.

    Calibration over many batches (:func:`mixq_compile.calibrate`): between :meth:`start_observing` and
    :meth:`finish_observing` the module passes its input through unchanged and feeds a :class:`RangeObserver`, so
    every site downstream observes FP32 values, as PTQ observers do, not values already rounded upstream.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.scale = nn.Parameter(torch.ones(1), requires_grad=spec.learnable)
        self.zero_point = nn.Parameter(torch.zeros(1), requires_grad=spec.learnable and not spec.symmetric)
        self.observer: RangeObserver | None = None  # set while observing calibration batches; never saved

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

    def start_observing(self) -> None:
        """Pass inputs through unchanged and accumulate their statistics until :meth:`finish_observing`."""
        self.observer = RangeObserver(self.spec)

    def finish_observing(self) -> bool:
        """Set the range from the statistics accumulated since :meth:`start_observing`; False if nothing was seen
        (the range is then left as it was)."""
        observer = self.observer
        self.stop_observing()
        if observer is None or (observer.low is None and observer.empty_rows is None):
            return False
        low, high = observer.range()
        self.calibrate_range(low.to(self.scale.device), high.to(self.scale.device))
        return True

    def stop_observing(self) -> None:
        """Quantize again, discarding the statistics (the range stays as it was)."""
        self.observer = None

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
        scale = grad_scale(self.scale, self._grad_factor(x)).abs().clamp_min(MIN_SCALE)
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
        scale = self._broadcast(self.scale.abs().clamp_min(MIN_SCALE), x)
        zero_point = self._broadcast(self.zero_point.detach() * 0 if spec.symmetric else self.zero_point, x)
        return scale, zero_point, (spec.qmin, spec.qmax), self._grad_factor(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
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
