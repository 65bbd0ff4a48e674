"""Save and load quantized models as safetensors plus a JSON description — never by unpickling objects.

A saved model is a directory: ``weights.safetensors`` (the state dict: FP32 weights, quantizer scales and
zero-points, bit-width logits, batch-norm statistics) and ``mixq.json`` (format version, input signature, site plan,
candidates, chosen bits when frozen). Loading re-captures the user's FP32 model (given as a module or a factory),
re-runs the same passes, checks that the site plan matches the saved one, and loads the tensors.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .api import freeze, quantize
from .atomic import check_replaceable, write_directory
from .config import DegreeQuant, QuantConfig
from .errors import MixQError
from .ir.plan import SitePlan
from .quantized_model import QuantizedModel

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "mixq.json"


class SavedModelError(MixQError, ValueError):
    """A saved model directory is missing, corrupt or does not match the model it is loaded into."""


def _config_to_dict(config: QuantConfig) -> dict:
    return {
        "bit_widths": list(config.bit_widths),
        "kinds": sorted(config.kinds),
        "specs": {kind: spec.to_dict() for kind, spec in config.specs.items()},
        "site_bit_widths": {k: list(v) for k, v in config.site_bit_widths.items()},
        "skip": list(config.skip),
        "unsigned_after_relu": config.unsigned_after_relu,
        "cache_structure": config.cache_structure,
        "degree_quant": None if config.degree_quant is None else asdict(config.degree_quant),
        "quantize_unread_sites": config.quantize_unread_sites,
    }


def _config_from_dict(data: dict) -> QuantConfig:
    from .quant.spec import QuantSpec

    return QuantConfig(
        bit_widths=tuple(data["bit_widths"]),
        kinds=frozenset(data["kinds"]),
        specs={k: QuantSpec.from_dict(v) for k, v in data["specs"].items()},
        site_bit_widths={k: tuple(v) for k, v in data["site_bit_widths"].items()},
        skip=tuple(data["skip"]),
        unsigned_after_relu=data["unsigned_after_relu"],
        cache_structure=data.get("cache_structure", False),
        degree_quant=None if data.get("degree_quant") is None else DegreeQuant(**data["degree_quant"]),
        # saved before the key existed: every op output was quantized then, and the weights match those sites
        quantize_unread_sites=data.get("quantize_unread_sites", True),
    )


def save(
    model: QuantizedModel, path: str | os.PathLike, *, overwrite: bool = True, metadata: dict | None = None
) -> Path:
    """Write ``model`` to the directory ``path`` atomically (a half-written save never replaces a good one).

    An earlier saved model at ``path`` is replaced (as checkpoints are), unless ``overwrite=False``; any other
    non-empty directory is refused, never deleted. ``metadata`` (JSON) is stored as is; its keys ``factory``
    (``"module:function"``) and ``factory_kwargs`` let :func:`load` rebuild the FP32 model by itself.
    """
    if not isinstance(model, QuantizedModel):
        raise TypeError(f"save() needs a QuantizedModel from mixq_compile.quantize/freeze, got {type(model).__name__}")
    target = Path(path)
    check_replaceable(target, META_FILE, "saved mixq_compile model", overwrite, SavedModelError)
    meta = {
        "format_version": FORMAT_VERSION,
        "frozen": not model.is_mixed,
        "bits": model.chosen_bits(),
        "inputs": [spec.to_dict() for spec in model.input_specs],
        "config": _config_to_dict(model.config),
        "plan": model.plan.to_dict(),
        "metadata": dict(metadata or {}),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_FILE))
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))

    return write_directory(target, fill)


def _synthetic_inputs(inputs: list[dict]) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like the captured ones; integer inputs are zeros (valid indices for any graph)."""
    out = []
    for spec in inputs:
        dtype = getattr(torch, spec["dtype"])
        shape = tuple(spec["shape"])
        out.append(torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype))
    return tuple(out)


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON description of the saved model at ``path``."""
    folder = Path(path)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise SavedModelError(f"{folder} is not a saved mixq_compile model: expected {META_FILE} and {WEIGHTS_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as error:
        raise SavedModelError(f"{meta_path} is corrupt ({error}); save the model again") from error
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise SavedModelError(f"{folder} has format version {version}, expected {FORMAT_VERSION}")
    return meta


def load(
    path: str | os.PathLike,
    model_or_factory: nn.Module | Callable[[], nn.Module] | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> QuantizedModel:
    """Rebuild a saved quantized model on top of the FP32 model it came from (``model_or_factory``; by default
    the factory recorded in the saved metadata, as ``mixq-compile quantize`` writes it)."""
    folder = Path(path)
    meta = read_meta(folder)
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except Exception as error:
        raise SavedModelError(f"cannot read the weights of the saved model in {folder}: {error}") from error
    if model_or_factory is None:
        recorded = meta.get("metadata", {})
        if "factory" not in recorded:
            raise SavedModelError(
                f"{folder} does not record how to build its FP32 model: pass the model (or a factory) to load()"
            )
        from .factory import build

        model = build(recorded["factory"], recorded.get("factory_kwargs", {}), recorded.get("factory_path"))
    else:
        model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    args = example_inputs if example_inputs is not None else _synthetic_inputs(meta["inputs"])
    with warnings.catch_warnings():  # the float-op warning was given when the model was first quantized
        warnings.filterwarnings("ignore", message=".*have no quantization rule.*")
        qmodel = quantize(model, args, config=_config_from_dict(meta["config"]))
    saved_plan = SitePlan.from_dict(meta["plan"])
    if [s.name for s in saved_plan.sites] != [s.name for s in qmodel.plan.sites]:
        raise SavedModelError(
            f"the model's quantization sites differ from the saved ones; saved {[s.name for s in saved_plan.sites]}, "
            f"got {[s.name for s in qmodel.plan.sites]}: load with the same FP32 model class and constructor arguments"
        )
    if meta["frozen"]:
        qmodel = freeze(qmodel, meta["bits"])
    try:
        qmodel.load_state_dict(tensors)
    except RuntimeError as error:
        raise SavedModelError(f"the saved tensors do not fit the model: {error}") from error
    return qmodel
