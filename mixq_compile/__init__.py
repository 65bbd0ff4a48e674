"""mixq_compile: a mixed-precision quantization compiler for PyTorch Geometric models.

Pipeline: ``quantize`` (capture with torch.export, find sites, insert MixQ mixed quantizers) -> train with
``task_loss + λ * penalty(qmodel)`` -> ``freeze`` (argmax bit-widths) -> QAT -> ``bitops`` / deployment.
"""

from .api import bitops, freeze, penalty, quantize, sites
from .config import SITE_KINDS, DegreeQuant, QuantConfig
from .errors import CaptureError, InputSignatureError, MixQError, NoQuantizableOpError
from .io import SavedModelError, load, save
from .model import QuantizedModel
from .quant import FakeQuantizer, MixedQuantizer, QuantSpec

__version__ = "0.1.0"

__all__ = [
    "SITE_KINDS",
    "CaptureError",
    "DegreeQuant",
    "FakeQuantizer",
    "InputSignatureError",
    "MixQError",
    "MixedQuantizer",
    "NoQuantizableOpError",
    "QuantConfig",
    "QuantSpec",
    "QuantizedModel",
    "SavedModelError",
    "bitops",
    "freeze",
    "load",
    "penalty",
    "quantize",
    "save",
    "sites",
]
