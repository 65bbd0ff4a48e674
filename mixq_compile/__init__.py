"""mixq_compile: a mixed-precision quantization compiler for PyTorch Geometric models.

Pipeline: ``quantize`` (capture with torch.export, find sites, insert MixQ mixed quantizers) -> train with
``task_loss + λ * penalty(qmodel)`` -> ``freeze`` (argmax bit-widths) -> QAT -> ``bitops`` / deployment.
"""

from . import (
    cpu,
    ops,  # noqa: F401  (registers torch.ops.mixq.*, which loading a .pt2 program needs)
)
from .api import (
    arch_parameters,
    bitops,
    fit_budget,
    freeze,
    penalty,
    quantize,
    search_param_groups,
    sites,
    weight_parameters,
)
from .artifact import Artifact, ArtifactError, BoundArtifact, export, load_artifact
from .calibration import calibrate
from .config import SITE_KINDS, DegreeQuant, QuantConfig
from .cost.latency import LatencyTable, LatencyTableError
from .errors import CaptureError, InputSignatureError, InputValueError, MixQError, NoQuantizableOpError
from .guard import freeze_searched
from .ir.program import IntegerProgram
from .latency_measure import latency_table
from .lowering.integer_program import lower
from .profiling import ProfileReport, profile
from .quant import FakeQuantizer, MixedQuantizer, QuantSpec
from .quantized_model import QuantizedModel
from .saved_model import SavedModelError, load, save
from .sensitivity import SensitivityReport, sensitivity
from .version import __version__

__all__ = [
    "SITE_KINDS",
    "Artifact",
    "ArtifactError",
    "BoundArtifact",
    "CaptureError",
    "DegreeQuant",
    "FakeQuantizer",
    "InputSignatureError",
    "InputValueError",
    "IntegerProgram",
    "LatencyTable",
    "LatencyTableError",
    "MixQError",
    "MixedQuantizer",
    "NoQuantizableOpError",
    "ProfileReport",
    "QuantConfig",
    "QuantSpec",
    "QuantizedModel",
    "SavedModelError",
    "SensitivityReport",
    "__version__",
    "arch_parameters",
    "bitops",
    "calibrate",
    "cpu",
    "export",
    "fit_budget",
    "freeze",
    "freeze_searched",
    "latency_table",
    "load",
    "load_artifact",
    "lower",
    "penalty",
    "profile",
    "quantize",
    "save",
    "search_param_groups",
    "sensitivity",
    "sites",
    "weight_parameters",
]
