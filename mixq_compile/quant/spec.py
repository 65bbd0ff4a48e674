"""Quantizer specifications as plain, frozen data.

A :class:`QuantSpec` says *what* a quantizer does (bits, signedness, granularity, how its range is initialised);
the modules in :mod:`mixq_compile.quant.quantizer` say *how*. Keeping intent as data lets passes copy, compare,
serialise and override it without touching any module.

Bit-width semantics: a ``b``-bit quantizer has exactly ``2**b`` integer levels. ``bits=1`` is therefore **binary**
(two levels, ``{-1, 0}`` signed or ``{0, 1}`` unsigned, mapped to reals through the scale and zero-point), not the
ternary ``{-1, 0, 1}`` that the MixQ reference code calls "1 bit".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

MIN_BITS = 1
MAX_BITS = 16

Granularity = Literal["tensor", "channel"]
RangeInit = Literal["minmax", "moving_average", "percentile", "mse"]
RANGE_INITS: tuple[str, ...] = ("minmax", "moving_average", "percentile", "mse")

#: ``QuantSpec.bounds`` widen ranges from this bit-width up: below it, resolution is worth more than rare extremes.
BOUNDS_FROM_BITS = 8


def check_bits(bits: object) -> int:
    """Return ``bits`` as an int, or raise a ``ValueError`` that names the allowed range."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"bit-width must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"bit-width {bits} is outside the supported range [{MIN_BITS}, {MAX_BITS}]; "
            "choose candidates such as (2, 4, 8)"
        )
    return bits


def check_candidates(bit_widths: object) -> tuple[int, ...]:
    """Validate a candidate bit-width list: non-empty, each in range, no duplicates; returned sorted ascending."""
    try:
        values = tuple(bit_widths)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"bit_widths must be a sequence of integers such as (2, 4, 8), got {bit_widths!r}") from None
    if not values:
        raise ValueError("bit_widths is empty: give at least one candidate bit-width, e.g. (2, 4, 8)")
    checked = tuple(sorted(check_bits(b) for b in values))
    if len(set(checked)) != len(checked):
        raise ValueError(f"bit_widths contains duplicates: {values!r}")
    return checked


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """The integer code range ``[qmin, qmax]`` of a ``bits``-bit quantizer (``2**bits`` levels)."""
    check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass(frozen=True)
class QuantSpec:
    """What one quantizer does.

    Attributes:
        bits: bit-width, 1..16 (``2**bits`` integer levels).
        signed: signed integer codes (``[-2^(b-1), 2^(b-1)-1]``) or unsigned (``[0, 2^b-1]``).
        symmetric: zero-point fixed at 0 (weights, so integer matmuls need no zero-point cross terms);
            otherwise affine with a learnable zero-point that is rounded to an integer in every forward pass.
        granularity: one scale for the whole tensor, or one per index of ``axis``.
        axis: the channel axis for ``granularity="channel"`` (0 = output channels of a weight).
        range_init: the observer that sets the initial range from the calibration batches (always including zero;
            :mod:`mixq_compile.quant.observer`): running min/max, ``"moving_average"`` min/max, percentiles
            (Degree-Quant style), or ``"mse"``: min/max shrunk to the clipping that minimises the quantization error
            on the calibration data.
        percentile: the lower tail fraction for ``range_init="percentile"`` (0.01 = 1st and 99th percentiles).
        averaging_constant: weight of each new batch's min/max for ``range_init="moving_average"``.
        bounds: an interval the values are known to lie in (normalisation coefficients and attention weights:
            ``(-1, 1)``), or ``None``. At ``BOUNDS_FROM_BITS`` bits and above, a calibrated range inside it is widened
            to the bound on each side the data reach: a calibration graph without an isolated node never shows the
            coefficient 1 that another graph has. Data outside the bounds keep their observed range.
        tail_margin: ``K`` for ranges observed over ``n > 1`` calibration batches at ``BOUNDS_FROM_BITS`` bits and
            above (``range_init`` ``"minmax"`` or ``"mse"``, outside ``bounds``): each end of the range reaches
            ``K / n`` times past the most extreme batch's excess over the mean of the batches' extremes, where
            graphs not calibrated on are expected to land; the more batches, the less often a new graph passes
            their maximum (0: the observed range).
        learnable: whether scale (and zero-point) are trained (LSQ+ gradients) or stay at their initial values.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    granularity: Granularity = "tensor"
    axis: int = 0
    range_init: RangeInit = "minmax"
    percentile: float = 0.01
    averaging_constant: float = 0.1
    bounds: tuple[float, float] | None = None
    tail_margin: float = 0.0
    learnable: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.granularity not in ("tensor", "channel"):
            raise ValueError(f"granularity must be 'tensor' or 'channel', got {self.granularity!r}")
        if self.range_init not in RANGE_INITS:
            raise ValueError(f"range_init must be one of {', '.join(map(repr, RANGE_INITS))}, got {self.range_init!r}")
        if not 0.0 <= self.percentile < 0.5:
            raise ValueError(f"percentile must be in [0, 0.5), got {self.percentile!r}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {self.averaging_constant!r}")
        if self.bounds is not None:
            values = tuple(float(b) for b in self.bounds)  # a JSON round trip gives a list
            lower, upper = values if len(values) == 2 else (1.0, -1.0)
            if not lower <= 0.0 <= upper:
                raise ValueError(f"bounds must be an interval (lower, upper) containing 0, got {self.bounds!r}")
            object.__setattr__(self, "bounds", (lower, upper))
        if not 0.0 <= self.tail_margin < float("inf"):
            raise ValueError(f"tail_margin must be a finite number >= 0, got {self.tail_margin!r}")

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.signed)[1]

    def with_bits(self, bits: int) -> QuantSpec:
        return replace(self, bits=bits)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantSpec:
        return cls(**data)
