"""Deployment backends, one module each, behind :class:`~mixq_compile.runtimes.base.Backend`."""

from __future__ import annotations

import importlib

from .base import Backend, BackendUnavailableError

#: backend name -> "module:class"; modules are imported on first use so optional dependencies stay optional.
BACKENDS = {
    "torch": "mixq_compile.runtimes.torch_pt2:TorchBackend",
    "onnx": "mixq_compile.runtimes.onnx_ort:OnnxBackend",
    "bitblas": "mixq_compile.runtimes.bitblas_cuda:BitblasBackend",
    "tvm": "mixq_compile.runtimes.tvm_relax:TvmBackend",
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or a ``ValueError`` listing the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["BACKENDS", "Backend", "BackendUnavailableError", "get_backend"]
