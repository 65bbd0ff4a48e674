"""The ``tvm`` backend: the feature program as a compiled Apache TVM Relax module (``features.so``).

- **Features** are translated node by node into Relax (:mod:`mixq_compile.runtimes.tvm.translator`), with symbolic
  node/edge counts, built for the host CPU (``{"kind": "llvm", "mcpu": <host>, "num-cores": <threads>}``),
  written with ``export_library`` and reloaded with ``tvm.runtime.load_module``. Dense layers and aggregations run
  hand-scheduled kernels (:mod:`mixq_compile.runtimes.tvm.kernels`), so no tuning is needed at export time.
- **Structure** (self loops, normalisation, edge-weight codes) stays a ``torch.export`` program (``structure.pt2``,
  as in the ``torch`` backend): it uses boolean-mask indexing, whose data-dependent shapes TVM cannot compile
  (TOOLCHAIN_NOTES.md §Q4). It also sorts each aggregation's edges by target for the CSR kernels. Loading a TVM
  artifact therefore needs torch as well as TVM; with ``load_artifact(..., cache_structure=True)`` the structure
  part runs once per graph.

The ``.so`` is built for this machine's CPU (it uses AVX-512 VNNI when present); re-export on another CPU type.
"""

from __future__ import annotations

import os
import re
import warnings
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from ... import cpu
from ...ir.program import IntegerProgram
from ...ir.signature import non_finite_error
from ...lowering.csr_aggregation import find_aggregations, sorted_structure
from ...lowering.fuse_input_linear import fuse_input_linear
from ...ops.input_linear import SPARSE_DENSITY, density
from ...ops.native import NODE_FEATURES
from ..base import Backend, BackendUnavailableError, Runner
from ..pt2 import export_program, load_pt2, save_program

STRUCTURE_FILE = "structure.pt2"
FEATURES_FILE = "features.so"
INSTALL_HINT = "pip install 'mixq_compile[tvm]'"


#: the LLVM CPU of each kernel level below the host's own (:mod:`mixq_compile.cpu`; ``MIXQ_ISA`` forces one).
LEVEL_MCPU = {"avx512": "skylake-avx512", "avx2": "haswell", "portable": "x86-64"}
#: instruction sets whose absence on the loading CPU makes a module die on SIGILL.
_CHECKED_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni")


def host_target(mcpu: str | None = None) -> dict:
    """The llvm target for ``mcpu`` (default: this CPU at the kernel level in force) as a JSON dict (TVM 0.27
    rejects CLI target strings)."""
    from tvm.target import codegen

    if mcpu is None:
        mcpu = LEVEL_MCPU.get(cpu.level()) if cpu.is_x86() else None
        mcpu = mcpu or codegen.llvm_get_system_cpu()
    return {"kind": "llvm", "mcpu": mcpu, "num-cores": torch.get_num_threads()}


class TvmBackend(Backend):
    """Option ``mcpu``: the LLVM CPU to build for (default: this CPU at the kernel level in force, e.g. "haswell"
    under ``MIXQ_ISA=avx2``); set it to the deployment CPU's when exporting elsewhere. int8 dense layers take the
    AVX-512 VNNI kernel where the target has it and the exact float32-FMA kernel otherwise. Option ``packed=False``
    keeps 2- and 4-bit codes in int8 containers (by default sparse input layers store and read 2/4-bit weights
    packed, :func:`.kernels.quantize_linear_sparse_packed`, and the CSR aggregations of such codes pack tables
    larger than the caches, :func:`.kernels.csr_aggregate_narrow`)."""

    name = "tvm"

    def __init__(self, mcpu: str | None = None, packed: bool = True) -> None:
        self.mcpu = mcpu
        self.packed = packed

    def unavailable_reason(self) -> str | None:
        try:
            import tvm  # noqa: F401
            from tvm import relax  # noqa: F401
        except ImportError as error:
            return f"Apache TVM is not importable ({error}); install it with {INSTALL_HINT}"
        return None

    def versions(self) -> dict[str, str]:
        import tvm

        return {"tvm": tvm.__version__, "tvm_ffi": metadata.version("apache-tvm-ffi")}

    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict:
        self.require()
        runtime_threads()  # before compilation, whose constant folding may start TVM's thread pool
        import tvm

        from . import schedule as tvm_schedule
        from . import translator
        from .converters import CONVERTERS

        features, _ = fuse_input_linear(program.features)
        translator.check_supported(features, CONVERTERS)
        frontier = tuple(program.structure(*example_inputs))
        aggregations = find_aggregations(features, len(example_inputs), frontier)
        structure = export_program(sorted_structure(program.structure, aggregations), example_inputs)
        save_program(structure, directory / STRUCTURE_FILE)

        target_json = host_target(self.mcpu)
        target = tvm.target.Target(target_json)
        use_vnni = tvm.target.codegen.target_has_features("avx512vnni", target)
        sparse = sparse_input_layers(features, example_inputs)
        converter = translator.Converter(features, aggregations, use_vnni, CONVERTERS, sparse, self.packed)
        module = converter.build(_params(structure, features))
        inputs = [n for n in features.graph.nodes if n.op == "placeholder"][: len(example_inputs)]
        executable = tvm.compile(module, target, relax_pipeline=tvm_schedule.pipeline(target))
        kernels = converter.kernel_module()
        if kernels is not None:
            executable.mod.import_module(tvm.compile(kernels, target).mod)
        executable.export_library(str(directory / FEATURES_FILE))
        return {
            "structure": STRUCTURE_FILE,
            "features": FEATURES_FILE,
            "target": target_json,
            "vnni": bool(use_vnni),
            "csr_aggregations": converter.csr_used,
            "narrow_aggregations": converter.narrow_used,
            "sparse_input_linears": converter.sparse_used,
            "packed_input_weights": converter.packed_weights,
            "finite_checked_inputs": [i for i, n in enumerate(inputs) if n in converter.finite_checked],
            "finite_flags": len(converter.finite_flags),
        }

    def kernel_paths(self, entries: dict) -> dict[str, str]:
        dense = "int8 AVX-512 VNNI (vpdpbusd)" if entries.get("vnni") else "int8 exact float32-FMA"
        paths = {
            "linear_int": dense,
            "target": str(entries.get("target", {}).get("mcpu")),
            "threads": str(runtime_threads()),
        }
        if entries.get("sparse_input_linears"):
            paths["input_layer"] = "quantize + GEMM over the non-zero features (sparse kernel)"
            if entries.get("packed_input_weights"):
                paths["input_layer"] += f", {entries['packed_input_weights']} with packed 2/4-bit weights"
        if entries.get("narrow_aggregations"):
            from ...ops.packed import PACK_FROM_BYTES

            paths["aggregation"] = (
                f"CSR row sums, {entries['narrow_aggregations']} of them over 2/4-bit codes, packed from "
                f"{PACK_FROM_BYTES >> 20} MB tables on"
            )
        return paths

    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]:
        self.require()
        _check_cpu(entries)
        structure = load_pt2(directory / entries["structure"])

        def aligned_structure(*inputs: Tensor) -> tuple[Tensor, ...]:
            return tuple(aligned(t) for t in structure(*inputs))

        return aligned_structure, load_features(directory / entries["features"], entries.get("finite_flags", 0))


def sparse_input_layers(features: torch.fx.GraphModule, example_inputs: tuple[Tensor, ...]) -> frozenset:
    """The fused input layers whose features (a graph input) are sparse in the example, so that the zero-skipping
    kernel beats quantize + dense GEMM: chosen at export, as TVM builds one kernel per layer (the torch backend
    decides per call instead). Sparser or denser graphs later give the same integers, only at another speed."""
    placeholders = [n for n in features.graph.nodes if n.op == "placeholder"][: len(example_inputs)]
    values = dict(zip(placeholders, example_inputs))
    fused = torch.ops.mixq.quantize_linear.default
    return frozenset(
        node
        for node in features.graph.nodes
        if node.target is fused and node.args[0] in values and density(values[node.args[0]]) <= SPARSE_DENSITY
    )


def _check_cpu(entries: dict) -> None:
    """Refuse, with the fix, a module whose kernels use instructions this CPU lacks (it would die on SIGILL)."""
    import tvm

    has = tvm.target.codegen.target_has_features
    built, here = tvm.target.Target(entries["target"]), tvm.target.Target(host_target())
    missing = [f for f in _CHECKED_FEATURES if has(f, built) and not has(f, here)]
    if missing:
        raise BackendUnavailableError(
            f"this TVM artifact was built for {entries['target'].get('mcpu')}, whose instructions "
            f"{', '.join(missing)} this CPU ({cpu.summary()}) lacks; export it again on this machine, or with "
            f"backend_options={{'mcpu': {here.mcpu!r}}}"
        )


def aligned(t: Tensor) -> Tensor:
    """``t`` contiguous and 64-byte aligned, as TVM's DLPack import requires (compiled kernels assume aligned
    buffers). Views into a larger tensor (e.g. one row of ``edge_index``) get copied; others pass through."""
    t = t.detach().contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


def runtime_threads() -> int:
    """The threads TVM's runtime runs parallel loops on in this process, its pool started with torch's count.

    Without ``TVM_NUM_THREADS`` the pool takes half the hardware threads on x86 (it assumes hyper-threaded pairs):
    one thread on a 2-vCPU machine, where every TVM artifact ran single-threaded (200k nodes, 2.2M edges, 256
    channels: the CSR aggregation 89 ms on the default pool, 45 ms on 2 threads). The pool reads the variable once,
    when it starts; a pool some other TVM code started first keeps its size, and the caller is warned."""
    import tvm

    wanted = torch.get_num_threads()
    os.environ.setdefault("TVM_NUM_THREADS", str(wanted))
    threads = int(tvm.get_global_func("runtime.NumThreads")())
    if threads < wanted and os.environ["TVM_NUM_THREADS"] == str(wanted):
        warnings.warn(
            f"TVM's thread pool was started with {threads} thread(s) before this artifact was loaded; its kernels "
            f"will not use the {wanted} torch uses. Set TVM_NUM_THREADS={wanted} before anything runs TVM code.",
            RuntimeWarning,
            stacklevel=3,
        )
    return threads


def load_features(path: Path, finite_flags: int = 0) -> Runner:
    """A compiled feature module as a callable on torch tensors (zero-copy through DLPack both ways).

    ``finite_flags``: how many trailing outputs are NaN/Inf flags of kernels that test the node features while they
    read them (:func:`.kernels.quantize_linear_sparse`); the runner raises the signature's error when one is set
    and returns the outputs before them."""
    import tvm
    from tvm import relax

    runtime_threads()
    machine = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    main = machine["main"]

    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        outputs = [torch.from_dlpack(o) for o in main(*(tvm.runtime.from_dlpack(aligned(t)) for t in inputs))]
        if finite_flags:
            flags = outputs[-finite_flags:]
            del outputs[-finite_flags:]
            if any(int(flag[0]) for flag in flags):
                raise non_finite_error(NODE_FEATURES)
        return tuple(outputs)

    return run


def _params(structure: torch.export.ExportedProgram, features: torch.fx.GraphModule) -> list:
    """Relax parameters of the feature function: the model inputs, then the structure outputs (frontier and sorted
    edges). Sizes come from the feature program's own symbols where it has them (so ``x``, ``batch`` and every
    aggregation output share one node-count ``tirx.Var``); tensors it has no shapes for (outputs of integer
    instructions, the sorted edges) get theirs from the exported structure program, translated into the same
    symbols through the tensors both describe."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int
    from tvm import tirx

    from .translator import Param

    user_inputs = set(structure.graph_signature.user_inputs)
    placeholders = [n for n in structure.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    output = next(n for n in structure.graph.nodes if n.op == "output")
    exported = [n.meta["val"] for n in placeholders] + [n.meta["val"] for n in output.args[0]]
    feature_inputs = [n for n in features.graph.nodes if n.op == "placeholder"]
    names = [n.name for n in feature_inputs] + [f"sorted_{i}" for i in range(len(exported) - len(feature_inputs))]
    captured = [n.meta.get("val") for n in feature_inputs] + [None] * (len(exported) - len(feature_inputs))
    symbols: dict[str, object] = {}

    def dim(size: int | torch.SymInt, prefix: str) -> object:
        if is_concrete_int(size):
            return int(size)
        key = prefix + str(size.node.expr)
        if key not in symbols:
            symbols[key] = tirx.Var(re.sub(r"\W+", "_", key), "int64")
        return symbols[key]

    for ours, theirs in zip(captured, exported):  # export symbol -> feature-program size, where both are known
        if isinstance(ours, Tensor):
            for a, b in zip(ours.shape, theirs.shape):
                if not is_concrete_int(b):
                    symbols.setdefault("export:" + str(b.node.expr), dim(a, ""))
    return [
        Param(
            name,
            str(theirs.dtype).removeprefix("torch."),
            [dim(a, "") for a in ours.shape] if isinstance(ours, Tensor) else [dim(b, "export:") for b in theirs.shape],
        )
        for name, ours, theirs in zip(names, captured, exported)
    ]
