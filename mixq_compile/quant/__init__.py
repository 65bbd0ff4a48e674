"""Quantization core: specs (data), fake-quant functions and quantizer modules."""

from .mixed import MixedQuantizer
from .quantizer import FakeQuantizer
from .spec import MAX_BITS, MIN_BITS, QuantSpec, check_bits, check_candidates, integer_range

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "FakeQuantizer",
    "MixedQuantizer",
    "QuantSpec",
    "check_bits",
    "check_candidates",
    "integer_range",
]
