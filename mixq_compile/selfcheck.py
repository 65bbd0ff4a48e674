"""An artifact's self-check: the example inputs and the integer program's answers, re-run wherever it is loaded.

A backend's kernels are chosen per CPU (:mod:`mixq_compile.cpu`), and a kernel that is exact on one CPU may not
be on another (onnxruntime's u8 × s8 GEMM saturates without VNNI). So ``export`` runs the artifact it wrote
against the integer program (the reference executor) before it reports success, and stores the inputs and the
reference outputs in ``selfcheck.safetensors``; ``load_artifact`` re-runs them on the loading CPU. A mismatch is an
:class:`~mixq_compile.artifact.ArtifactError` naming the CPU, not a deployed model.

Agreement: integer outputs must be equal; float outputs must agree to float rounding (``1e-5`` of the output's
magnitude for integer programs, ``1e-4`` for FP32 ones, whose backends may sum in another order). A few elements
(≤ 0.1 %) off by more are tolerated with a warning: a float op before a requantization (softmax, layer norm) may
round a value lying on a code boundary the other way, which moves that one output by a step. Wrong kernels move
most outputs (the saturating GEMM: 74 % of them).

Sparse float inputs (bag-of-words features) are stored as their non-zeros, so the check costs little space.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

FILE = "selfcheck.safetensors"
TOLERATED_FRACTION = 1e-3
_RELATIVE = {"integer": 1e-5, "fp32": 1e-4}
_SPARSE_BELOW = 0.25  # store a float input as its non-zeros below this density


@dataclass(frozen=True)
class Agreement:
    """How an artifact's outputs compare with the reference outputs."""

    elements: int
    mismatched: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.mismatched <= TOLERATED_FRACTION * max(self.elements, 1)

    def describe(self) -> str:
        share = 100.0 * self.mismatched / max(self.elements, 1)
        return f"{self.mismatched} of {self.elements} outputs ({share:.2f} %) differ, by up to {self.max_abs_diff:.4g}"


def compare(expected: tuple[Tensor, ...], got: tuple[Tensor, ...], precision: str) -> Agreement:
    """Element-wise agreement of two flat output tuples (see the module docstring for the tolerances)."""
    if len(expected) != len(got):
        return Agreement(1, 1, float("inf"))
    elements = mismatched = 0
    worst = 0.0
    for e, g in zip(expected, got):
        if tuple(e.shape) != tuple(g.shape):
            return Agreement(1, 1, float("inf"))
        elements += e.numel()
        if e.numel() == 0:
            continue
        if e.is_floating_point() or g.is_floating_point():
            e64, g64 = e.double(), g.double()
            diff = (e64 - g64).abs()
            finite = torch.isfinite(e64)
            scale = float(e64[finite].abs().max()) if finite.any() else 1.0
            tolerance = _RELATIVE[precision] * max(1.0, scale)
            same_nonfinite = (e64 == g64) | (torch.isnan(e64) & torch.isnan(g64))
            bad = ~same_nonfinite & ~(diff <= tolerance)
        else:
            diff = (e.long() - g.long()).abs().double()
            bad = diff > 0
        mismatched += int(bad.sum())
        if bad.any():
            worst = max(worst, float(diff[bad].max()))
    return Agreement(elements, mismatched, worst)


def warn_if_imperfect(agreement: Agreement, where: str) -> None:
    if agreement.mismatched:
        warnings.warn(f"{where}: {agreement.describe()} (within the tolerated {TOLERATED_FRACTION:.1%})", stacklevel=3)


def save(directory: Path, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> None:
    """Write the check vectors (inputs, possibly sparse, and the reference outputs) into ``directory``."""
    tensors: dict[str, Tensor] = {}
    for i, value in enumerate(inputs):
        value = value.detach().cpu().contiguous()
        flat = value.reshape(-1)
        if value.is_floating_point() and flat.numel() and torch.count_nonzero(flat) < _SPARSE_BELOW * flat.numel():
            positions = torch.nonzero(flat).reshape(-1)
            tensors[f"input.{i}.positions"] = positions
            tensors[f"input.{i}.values"] = flat[positions]
            tensors[f"input.{i}.shape"] = torch.tensor(value.shape, dtype=torch.int64)
            tensors[f"input.{i}.dtype_like"] = torch.empty(0, dtype=value.dtype)
        else:
            tensors[f"input.{i}"] = value
    for i, value in enumerate(outputs):
        tensors[f"output.{i}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(directory / FILE))


def load(directory: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None:
    """The stored (inputs, reference outputs), or ``None`` for an artifact exported without them."""
    path = directory / FILE
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    inputs, outputs = [], []
    i = 0
    while f"input.{i}" in tensors or f"input.{i}.positions" in tensors:
        if f"input.{i}" in tensors:
            inputs.append(tensors[f"input.{i}"])
        else:
            shape = [int(s) for s in tensors[f"input.{i}.shape"]]
            dense = torch.zeros(shape, dtype=tensors[f"input.{i}.dtype_like"].dtype).reshape(-1)
            dense[tensors[f"input.{i}.positions"]] = tensors[f"input.{i}.values"]
            inputs.append(dense.reshape(shape))
        i += 1
    i = 0
    while f"output.{i}" in tensors:
        outputs.append(tensors[f"output.{i}"])
        i += 1
    return tuple(inputs), tuple(outputs)
