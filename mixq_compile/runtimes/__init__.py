"""Deployment backends, one module each, behind :class:`~mixq_compile.runtimes.base.Backend`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

from .base import Backend, BackendUnavailableError

#: backend name -> "module:class"; modules are imported on first use so optional dependencies stay optional.
BACKENDS = {
    "torch": "mixq_compile.runtimes.torch.backend:TorchBackend",
    "onnx": "mixq_compile.runtimes.onnx.backend:OnnxBackend",
    "bitblas": "mixq_compile.runtimes.bitblas.backend:BitblasBackend",
    "tvm": "mixq_compile.runtimes.tvm.backend:TvmBackend",
}


def get_backend(name: str, **options: object) -> Backend:
    """The backend called ``name`` with its ``options``, or a ``ValueError`` naming the known backends/options."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        return cls(**options)
    except TypeError as error:
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"backend {name!r} takes the options {accepted}, got {sorted(options)}") from error


def available_backends(wanted: Sequence[str]) -> tuple[list[tuple[str, str, dict]], dict[str, str]]:
    """(label, backend, options) of the usable ``wanted`` specs ("name" or "name:flag", e.g. "torch:aot_inductor")
    and the reason each other one is skipped."""
    usable, skipped = [], {}
    for spec in wanted:
        name, _, flag = spec.partition(":")
        options = {flag: True} if flag else {}
        if name not in BACKENDS:
            skipped[spec] = "not built into this mixq_compile"
            continue
        try:
            reason = get_backend(name, **options).unavailable_reason()
        except ValueError as error:
            reason = str(error)
        if reason is None:
            usable.append((spec, name, options))
        else:
            skipped[spec] = reason
    return usable, skipped


__all__ = ["BACKENDS", "Backend", "BackendUnavailableError", "available_backends", "get_backend"]
