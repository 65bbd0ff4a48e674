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

The example alone misses what it does not contain. So the check also runs a *stressed* copy of it
(:func:`stressed`): the same features, with the first nodes cut off from every edge, so that aggregations meet
rows that receive nothing (a max aggregation's empty rows were -2**31 on TVM, on graphs unlike the example).

Sparse float inputs (bag-of-words features) are stored as their non-zeros, so the check costs little space.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .ir.signature import Signature

FILE = "selfcheck.safetensors"
TOLERATED_FRACTION = 1e-3
_RELATIVE = {"integer": 1e-5, "fp32": 1e-4}
_SPARSE_BELOW = 0.25  # store a float input as its non-zeros below this density
_CUT_OFF = 32  # the stressed case cuts the first N // 32 nodes (at least one) off from the edges

#: one check case: (inputs, the integer program's outputs on them)
Case = tuple[tuple[Tensor, ...], tuple[Tensor, ...]]


def stressed(inputs: tuple[Tensor, ...], signature: Signature) -> tuple[Tensor, ...] | None:
    """``inputs`` with the first ``max(1, N // 32)`` nodes taken out of every edge input (``edge_index``-like: a
    ``[2, E]`` node-id input bounded by the features' rows): their ids, as source or target, move ``k`` nodes on.
    Shapes, dtypes and every other input are unchanged, so the copy satisfies the signature. ``None`` when the
    model has no such input or too few nodes."""
    by_name = dict(zip(signature.names, inputs))
    out = list(inputs)
    changed = False
    for rule in signature.index_rules:
        if rule.bound is None:
            continue
        nodes = by_name[rule.bound].shape[0]
        edges = by_name[rule.input]
        k = max(1, nodes // _CUT_OFF)
        if nodes <= k or edges.numel() == 0:
            continue
        position = signature.names.index(rule.input)
        out[position] = torch.where(edges < k, edges + k, edges)
        changed = True
    return tuple(out) if changed else None


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


def check_cases(cases: Sequence[Case], run, precision: str) -> Agreement:
    """Agreement of ``run(inputs)`` (flat outputs) with the reference outputs, over every case together."""
    total = Agreement(0, 0, 0.0)
    for inputs, expected in cases:
        one = compare(expected, run(inputs), precision)
        total = Agreement(total.elements + one.elements, total.mismatched + one.mismatched,
                          max(total.max_abs_diff, one.max_abs_diff))  # fmt: skip
    return total


def warn_if_imperfect(agreement: Agreement, where: str) -> None:
    if agreement.mismatched:
        warnings.warn(f"{where}: {agreement.describe()} (within the tolerated {TOLERATED_FRACTION:.1%})", stacklevel=3)


def save(directory: Path, cases: Sequence[Case]) -> None:
    """Write the check cases (inputs, possibly sparse, and the reference outputs) into ``directory``: the first
    under ``input.i`` / ``output.i``, the others under ``case<k>.`` prefixes (an input that is the first case's
    own tensor is stored once)."""
    tensors: dict[str, Tensor] = {}
    for k, (inputs, outputs) in enumerate(cases):
        prefix = f"case{k}." if k else ""
        for i, value in enumerate(inputs):
            if k and value is cases[0][0][i]:  # unchanged in this case (the features): stored once
                tensors[f"{prefix}input.{i}.same"] = torch.empty(0)
            else:
                tensors |= _stored(f"{prefix}input.{i}", value.detach().cpu().contiguous())
        for i, value in enumerate(outputs):
            tensors[f"{prefix}output.{i}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(directory / FILE))


def _stored(key: str, value: Tensor) -> dict[str, Tensor]:
    flat = value.reshape(-1)
    if value.is_floating_point() and flat.numel() and torch.count_nonzero(flat) < _SPARSE_BELOW * flat.numel():
        positions = torch.nonzero(flat).reshape(-1)
        return {f"{key}.positions": positions, f"{key}.values": flat[positions],
                f"{key}.shape": torch.tensor(value.shape, dtype=torch.int64),
                f"{key}.dtype_like": torch.empty(0, dtype=value.dtype)}  # fmt: skip
    return {key: value}


def load(directory: Path) -> list[Case] | None:
    """The stored check cases, or ``None`` for an artifact exported without them."""
    path = directory / FILE
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    cases = []
    k = 0
    while True:
        prefix = f"case{k}." if k else ""
        inputs = _sequence(tensors, f"{prefix}input.", cases[0][0] if cases else ())
        if not inputs:
            return cases
        cases.append((inputs, _sequence(tensors, f"{prefix}output.")))
        k += 1


def _sequence(tensors: dict[str, Tensor], prefix: str, first: tuple[Tensor, ...] = ()) -> tuple[Tensor, ...]:
    values = []
    i = 0
    while any(f"{prefix}{i}{end}" in tensors for end in ("", ".positions", ".same")):
        key = f"{prefix}{i}"
        if f"{key}.same" in tensors:
            values.append(first[i])
        elif key in tensors:
            values.append(tensors[key])
        else:
            shape = [int(s) for s in tensors[f"{key}.shape"]]
            dense = torch.zeros(shape, dtype=tensors[f"{key}.dtype_like"].dtype).reshape(-1)
            dense[tensors[f"{key}.positions"]] = tensors[f"{key}.values"]
            values.append(dense.reshape(shape))
        i += 1
    return tuple(values)
