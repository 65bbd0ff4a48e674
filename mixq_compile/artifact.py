"""Deployable artifacts: ``export`` a frozen (or FP32) model to a backend, ``load_artifact`` it back, verified.

An artifact is a directory with the backend's files and ``manifest.json``: backend, input signature (dynamic dims),
per-site bits, BitOPs under both conventions, model bytes, library versions, the CPU it was exported on and the
kernels it chose there, and the sha256 of every file. It is written atomically, and loading refuses a directory
whose files are missing, altered or truncated. ``export`` checks the artifact against the integer program before
it reports success, and ``load_artifact`` re-checks it on the loading CPU (:mod:`mixq_compile.selfcheck`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from . import cpu, selfcheck
from .api import bitops, captured_fp32_bitops
from .atomic import check_replaceable, write_directory
from .capture import capture
from .cost.bitops import BitOpsReport
from .errors import InputSignatureError, MixQError
from .ir.program import IntegerProgram
from .ir.signature import InputSpec, Signature, all_finite, non_finite_error
from .ir.structure_cache import StructureCache
from .lowering.integer_program import lower
from .quantized_model import QuantizedModel
from .runtimes import get_backend
from .runtimes.base import Runner

MANIFEST = "manifest.json"
FORMAT = "mixq-artifact"
FORMAT_VERSION = 2  # 2: shape guards and node-id rules in the signature, manifest digest


class ArtifactError(MixQError, ValueError):
    """An artifact directory is missing, corrupt, truncated or was made for something else."""


@dataclass(frozen=True)
class _Captured:
    """An FP32 model as captured (the lowering input for FP32 baseline artifacts)."""

    graph_module: fx.GraphModule
    signature: Signature


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cost_entries(reports: dict[str, BitOpsReport]) -> dict:
    return {
        "bitops": {c: r.bitops for c, r in reports.items()},
        "avg_bits": reports["wa"].avg_bits,
        "model_bytes": reports["wa"].model_bytes,
    }


def lower_for_export(
    model: nn.Module, example_inputs: tuple[Tensor, ...], fixed_point: bool = False
) -> tuple[IntegerProgram, str, dict]:
    """The program to export, its precision and its cost entries: a frozen model's integer program, or an FP32
    model's float one (captured once)."""
    conventions = ("wa", "paper")
    if isinstance(model, QuantizedModel):
        if model.is_mixed:
            raise ValueError("export() needs a frozen model: call mixq_compile.freeze(qmodel) first")
        model.check_inputs(example_inputs)
        costs = _cost_entries({c: bitops(model, example_inputs, convention=c) for c in conventions})
        return lower(model.eval(), fixed_point=fixed_point), "integer", costs
    gm, signature = capture(model.eval(), example_inputs)
    costs = _cost_entries({c: captured_fp32_bitops(gm, model, example_inputs, c) for c in conventions})
    return lower(_Captured(gm.eval(), signature)), "fp32", costs


def export(
    model: nn.Module,
    example_inputs: Sequence[Tensor],
    path: str | os.PathLike,
    backend: str = "torch",
    *,
    fixed_point: bool = False,
    backend_options: dict | None = None,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Export ``model`` (frozen: as an integer program; a plain FP32 model: as a float baseline) to ``backend``.

    Writes the artifact directory ``path`` atomically and returns it. ``backend`` is one of
    ``mixq_compile.runtimes.BACKENDS`` ("torch", "onnx", "tvm", "bitblas" where installed). ``fixed_point=True``
    requantizes with integer mantissa/shift pairs instead of float multipliers (for integer-only targets).
    ``backend_options`` are passed to the backend (e.g. ``{"aot_inductor": True}`` for "torch").
    ``overwrite=True`` replaces an earlier artifact at ``path`` (only once the new one is complete and checked);
    a directory that is not an artifact is never replaced. ``metadata`` (JSON, e.g. the data set) goes into the
    manifest as is.
    """
    check_replaceable(Path(path), MANIFEST, "mixq_compile artifact", overwrite, ArtifactError)
    runtime = get_backend(backend, **(backend_options or {}))
    args = tuple(example_inputs)
    program, precision, costs = lower_for_export(model, args, fixed_point)

    cases = _check_cases(program, args)

    def fill(directory: Path) -> None:
        entries = runtime.export(program, args, directory)
        check = _check_at_export(runtime, directory, entries, cases, precision)
        selfcheck.save(directory, cases)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backend": runtime.name,
            "precision": precision,
            "requantization": "fixed_point" if fixed_point else "float_multiplier",
            "backend_entries": entries,
            **program.signature.to_dict(),
            "output_spec": pytree.treespec_dumps(program.out_spec) if program.out_spec is not None else None,
            "frontier": list(program.frontier),
            "site_bits": program.site_bits,
            "float_ops": list(program.float_ops),
            **costs,
            "cpu": cpu.describe(),
            "kernel_paths": runtime.kernel_paths(entries),
            "selfcheck": check,
            "versions": {"mixq_compile": _version(), "torch": torch.__version__, **runtime.versions()},
            "files": {str(p.relative_to(directory)): _sha256(p) for p in files},
            "metadata": dict(metadata or {}),
        }
        manifest["digest"] = _manifest_digest(manifest)
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))

    return write_directory(path, fill)


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's content (every key but the digest), so a hand edit (bits, backend) is caught."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _run_flat(structure: Runner, features: Runner, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(features(*inputs, *structure(*inputs)))


def _check_cases(program, args: tuple) -> list[selfcheck.Case]:
    """The self-check cases: the example inputs and their stressed copy (:func:`selfcheck.stressed`), each with
    the integer program's outputs."""
    run = functools.partial(_run_flat, program.structure, program.features)
    cases = [(args, run(args))]
    extra = selfcheck.stressed(args, program.signature)
    if extra is not None:
        try:
            cases.append((extra, run(extra)))
        except Exception as error:  # the model itself cannot take such a graph: check the example alone
            warnings.warn(
                f"the self-check's stressed graph (the example with some nodes cut off from every edge) cannot "
                f"be run by the program ({type(error).__name__}: {error}); the artifact is checked on the example "
                f"inputs only",
                stacklevel=3,
            )
    return cases


def _check_at_export(runtime, directory: Path, entries: dict, cases: list, precision: str) -> dict:
    """Load the freshly written files and compare them with the program on the check cases; raise if they
    disagree (the staging directory is then discarded, so no wrong artifact is left behind)."""
    reason = runtime.unavailable_reason()
    if reason is not None:
        return {"file": selfcheck.FILE, "checked_at_export": False, "reason": reason}
    structure, features = runtime.load(directory, entries)
    agreement = selfcheck.check_cases(cases, functools.partial(_run_flat, structure, features), precision)
    if not agreement.ok:
        raise ArtifactError(
            f"the {runtime.name} artifact does not compute what the integer program computes on this CPU "
            f"({cpu.summary()}): {agreement.describe()}. Kernel paths: {runtime.kernel_paths(entries)}. Nothing "
            f"was written. Export with another backend, or set MIXQ_ISA=avx2 / portable to use a more "
            f"conservative kernel, and report the model and CPU"
        )
    selfcheck.warn_if_imperfect(agreement, f"export to {runtime.name}")
    return {"file": selfcheck.FILE, "checked_at_export": True, "mismatched": agreement.mismatched,
            "elements": agreement.elements, "max_abs_diff": agreement.max_abs_diff}  # fmt: skip


def _version() -> str:
    from .version import __version__

    return __version__


class Artifact:
    """A loaded, verified artifact: call it like the model (``artifact(x, edge_index)``).

    With ``cache_structure=True`` the structure part (self loops, normalisation, edge-weight codes) is computed once
    per graph and reused while the same topology tensors (same objects, unmodified) and input shapes come back — the
    transductive setting of PyG's ``cached=True`` (:class:`~mixq_compile.ir.structure_cache.StructureCache`).
    """

    def __init__(
        self,
        path: Path,
        manifest: dict,
        structure: Runner,
        features: Runner,
        cache_structure: bool,
        kernel_paths: dict[str, str] | None = None,
        finite_checked_inputs: tuple[int, ...] = (),
    ) -> None:
        self.path = path
        self.manifest = manifest
        #: the kernels this artifact runs on this CPU (e.g. ``{"linear_int": "float_exact"}``).
        self.kernel_paths = dict(kernel_paths or {})
        self.signature = Signature.from_dict(manifest)
        #: inputs the program's kernels test for NaN/Inf themselves (see ``Backend.finite_checked_inputs``)
        self.finite_checked_later = frozenset(self.signature.names[i] for i in finite_checked_inputs)
        spec = manifest.get("output_spec")
        self.out_spec = pytree.treespec_loads(spec) if spec else None
        self.structure_cache = StructureCache(structure) if cache_structure else None
        self._structure, self._features = self.structure_cache or structure, features
        self._checked_frontier: tuple | None = None  # the cached structure outputs of a graph whose ids were checked

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        return self.signature.inputs

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, backend={self.backend!r}, precision={self.manifest['precision']!r})"

    def check_inputs(self, args: tuple, node_ids: bool = True) -> None:
        self.signature.check(args, "the artifact", self.finite_checked_later, node_ids)

    def structure(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(self._structure(*inputs))

    def __call__(self, *inputs: Tensor) -> object:
        """Check the inputs, then run. The node-id ranges (a pass over ``edge_index``: 12 ms on 10M edges) are
        checked unless the structure cache holds this very graph from a call that checked them: its comparison
        has just found the ids equal to those."""
        self.check_inputs(inputs, node_ids=False)
        cache = self.structure_cache
        frontier = cache.lookup(inputs) if cache is not None else None
        if frontier is None or frontier is not self._checked_frontier:
            self.signature.check_node_ids(inputs)
            if frontier is None:
                frontier = cache.store(inputs) if cache is not None else tuple(self._structure(*inputs))
            self._checked_frontier = frontier  # the cache's own tuple when it kept the graph
        return self.outputs(self._features(*inputs, *frontier))

    def outputs(self, flat: Sequence[Tensor]) -> object:
        """The feature program's flat outputs in the model's output structure."""
        outputs = list(flat)
        if self.out_spec is None:
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        return pytree.tree_unflatten(outputs, self.out_spec)

    def bind(self, *inputs: Tensor) -> BoundArtifact:
        """Fix the graph for serving: ``served = artifact.bind(x, edge_index)`` checks the inputs and runs the
        structure part once; ``served(x_new)`` then takes only the floating-point inputs (node features of the
        same shape) and runs the feature program alone, with no per-call graph comparison or node-id check."""
        return BoundArtifact(self, inputs)


class BoundArtifact:
    """An :class:`Artifact` with its graph inputs fixed (see :meth:`Artifact.bind`).

    The graph tensors (every non-floating input: ``edge_index``, ``batch``) are copied at bind, so later writes to
    the caller's tensors change nothing; each call takes the floating-point inputs in their order, checked for
    dtype, for the bound shape (the structure part depends on it) and for NaN/Inf as the artifact checks them.
    """

    def __init__(self, artifact: Artifact, inputs: Sequence[Tensor]) -> None:
        inputs = tuple(inputs)
        artifact.check_inputs(inputs)
        self.artifact = artifact
        self.free = [i for i, t in enumerate(inputs) if t.is_floating_point()]
        self._inputs = [None if i in self.free else t.detach().clone() for i, t in enumerate(inputs)]
        self._shapes = [tuple(inputs[i].shape) for i in self.free]
        self._frontier = tuple(t.detach() for t in artifact.structure(*inputs))
        self.names = [artifact.signature.names[i] for i in self.free]

    def __repr__(self) -> str:
        return f"BoundArtifact({self.artifact!r}, takes {self.names})"

    def __call__(self, *features: Tensor) -> object:
        if len(features) != len(self.free):
            raise InputSignatureError(
                f"the bound artifact takes {len(self.free)} input(s) ({', '.join(self.names)}): the graph inputs "
                f"were fixed by bind(); got {len(features)}"
            )
        args = list(self._inputs)
        for position, name, shape, value in zip(self.free, self.names, self._shapes, features):
            spec = self.artifact.signature.inputs[position]
            if not isinstance(value, Tensor) or value.dtype != spec.dtype or tuple(value.shape) != shape:
                got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
                raise InputSignatureError(
                    f"input '{name}' must have the bound shape {shape} and dtype {spec.dtype} (got {got}); bind the "
                    f"artifact again for another graph"
                )
            if name not in self.artifact.finite_checked_later and not all_finite(value):
                raise non_finite_error(f"input '{name}'")
            args[position] = value
        return self.artifact.outputs(self.artifact._features(*args, *self._frontier))


def read_manifest(path: str | os.PathLike) -> tuple[Path, dict]:
    """The verified manifest of the artifact at ``path`` (every file present and matching its checksum)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{folder} is not a mixq_compile artifact: {MANIFEST} is missing (export it again)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{manifest_path} is corrupt ({error}); export the artifact again") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder} has artifact format version {manifest.get('format_version')}, this mixq_compile reads "
            f"{FORMAT_VERSION}; export it again with this version"
        )
    if manifest.get("digest") != _manifest_digest(manifest):
        raise ArtifactError(
            f"{manifest_path} was modified after export (its digest does not match its content): site bits, "
            f"backend or checksums edited by hand are not trusted; export the artifact again"
        )
    for name, expected in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"artifact {folder} is incomplete: {name} is missing; export it again")
        if _sha256(file) != expected:
            raise ArtifactError(
                f"artifact file {file} does not match its checksum (corrupt, truncated or modified); export it again"
            )
    return folder, manifest


def load_artifact(path: str | os.PathLike, *, cache_structure: bool = True, verify: bool = True) -> Artifact:
    """Load an exported artifact after verifying its manifest and checksums.

    ``cache_structure`` (default on): the topology preprocessing runs once per graph and is reused while the same
    graph tensors (same objects, unmodified) come back, as PyG's ``cached=True``; pass ``False`` to recompute it on
    every call. ``verify`` (default on): re-run the stored self-check on this CPU and raise
    :class:`ArtifactError` if the artifact's answers differ from the integer program's (one call at load).
    """
    folder, manifest = read_manifest(path)
    runtime = get_backend(manifest["backend"])
    runtime.require()
    try:
        structure, features = runtime.load(folder, manifest["backend_entries"])
    except MixQError:
        raise
    except Exception as error:
        raise ArtifactError(f"the {runtime.name} runtime could not load {folder}: {error}") from error
    paths = runtime.kernel_paths(manifest["backend_entries"])
    if verify:
        _verify_on_this_cpu(folder, manifest, structure, features, paths)
    checked = runtime.finite_checked_inputs(manifest["backend_entries"])
    return Artifact(folder, manifest, structure, features, cache_structure, paths, checked)


def _verify_on_this_cpu(folder: Path, manifest: dict, structure: Runner, features: Runner, paths: dict) -> None:
    cases = selfcheck.load(folder)
    if not cases:
        return
    run = functools.partial(_run_flat, structure, features)
    agreement = selfcheck.check_cases(cases, run, manifest["precision"])
    if not agreement.ok:
        exported_on = manifest.get("cpu", {}).get("model", "an unrecorded CPU")
        raise ArtifactError(
            f"artifact {folder} gives wrong answers on this CPU ({cpu.summary()}): on its self-check inputs "
            f"{agreement.describe()} from the integer program recorded at export (on {exported_on}). Kernel "
            f"paths here: {paths}. Do not deploy it here: export it again on this machine, or with another backend"
        )
    selfcheck.warn_if_imperfect(agreement, f"self-check of {folder}")
