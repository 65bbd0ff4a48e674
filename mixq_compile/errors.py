"""Errors raised by mixq_compile, each naming the problem and the fix."""

from __future__ import annotations


class MixQError(Exception):
    """Base class of every error mixq_compile raises on purpose."""


class CaptureError(MixQError, RuntimeError):
    """torch.export could not capture the model as an FX graph."""


class NoQuantizableOpError(MixQError, ValueError):
    """The captured graph has no operation that any quantization rule matches."""


class InputSignatureError(MixQError, ValueError):
    """A quantized model was called with inputs that do not match the captured signature."""


class InputValueError(MixQError, ValueError):
    """An input has the captured signature but values the model cannot take (node ids out of range, NaN)."""
