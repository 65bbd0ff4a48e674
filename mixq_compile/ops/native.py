"""Native kernels behind ``mixq::csr_sum``, ``mixq::quantize``, ``mixq::requantize`` and
``mixq::quantize_linear``: one small C file compiled once per machine, called via ctypes.

Why native code: summing Cora's 13k messages of 128 channels is ~1.7 M multiply-adds, a few tens of µs, but doing it
with ATen ops (int -> float conversion, MKL's float CSR product, conversion back) costs ~0.5 ms per aggregation, a
sixth of the whole AOTInductor program; and quantizing Cora's 15 MB of input features takes 0.64 ms in Inductor's
fused loop where one pass at memory speed takes ~0.3. ``native_kernels.c`` sums int8/int16/int32 codes straight into
int32 with the same wrap-around semantics as the integer program's scatter-add, quantizes float32 and requantizes
int32 accumulators with the instructions' exact IEEE steps in one pass each (run op by op, each instruction is five
ATen ops of ~20 µs dispatch and a temporary each), and fuses quantization into the first linear layer for sparse
features; all split rows over OpenMP threads, and hold each row's outputs in vector registers while they sum.

The shared library is built with the system C compiler (``$CC``, else ``cc``) for the kernel level in force
(:mod:`mixq_compile.cpu`: ``-march=native`` at "vnni", Skylake-AVX512 at "avx512", Haswell (AVX2 + FMA) at "avx2",
the x86-64 baseline at "portable"; ``MIXQ_ISA`` forces a lower one, so one machine builds and tests every path) into
``$MIXQ_KERNEL_CACHE`` (default ``~/.cache/mixq_compile/native``), keyed by a hash of the source, the flags and
the CPU, and renamed into place atomically, so concurrent processes never load a half-written file. Without a
compiler, or with ``MIXQ_NATIVE=0``, :func:`library` returns ``None`` and the ops compute with ATen code
(same results, slower); the reason is given once as a warning and by :func:`unavailable_reason`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import cpu
from ..ir import instructions as K
from ..ir.instructions import container_dtype
from ..ir.signature import non_finite_error
from . import buffers
from .derived import channel_vector

#: how a NaN/Inf error from the fused input layer names what it read
NODE_FEATURES = "the node features read by the quantized input layer"

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=c11")
_ERRORS = {
    1: "edge targets (dst) must be sorted ascending and lie in [0, rows)",
    2: "edge sources (src) must lie in [0, number of table rows)",
    3: "out of memory for the kernel's scratch buffers",
    5: "the OS did not grant this process the AMX tile state",
    6: "the kernels were built without AVX2",
}
_CSR = {torch.int8: "csr_sum_int8", torch.int16: "csr_sum_int16", torch.int32: "csr_sum_int32"}
_QUANTIZE = {torch.int8: "quantize_int8", torch.int16: "quantize_int16"}
_REQUANTIZE = {torch.int8: "requantize_int8", torch.int16: "requantize_int16"}
_QUANTIZE_LINEAR = {torch.int8: "quantize_linear_int8", torch.int16: "quantize_linear_int16"}
#: kernels over packed sub-byte codes (uint8 tables, see :mod:`.packed`), by bits
_CSR_PACKED = {2: "csr_sum_packed2", 4: "csr_sum_packed4"}
#: the native int8 GEMMs, by ``linear_int`` path (:mod:`.linear`)
_GEMMS = {"int8_amx": "gemm_s8_amx", "int8_pairs": "gemm_s8_pairs"}
_QUANTIZE_LINEAR_PACKED = {2: "quantize_linear_packed2", 4: "quantize_linear_packed4"}


def _cache_dir() -> Path:
    default = os.path.join(os.path.expanduser("~"), ".cache", "mixq_compile", "native")
    return Path(os.environ.get("MIXQ_KERNEL_CACHE") or default)


#: the code generation flag of each kernel level (x86); other architectures build for their native CPU.
_MARCH = {"amx": "-march=native", "vnni": "-march=native", "avx512": "-march=skylake-avx512", "avx2": "-march=haswell",
          "portable": "-march=x86-64"}  # fmt: skip


#: AVX-512 levels: gcc's tuning for these CPUs vectorizes plain loops (the requantize epilogues, quantize) with
#: 256-bit registers; 512-bit ones measured faster (Xeon, one thread: Cora-sized 128-channel aggregation with
#: requantize 209 -> 166 us, the input layer 878 -> 812 us; two threads 122 -> 99 and 512 -> 425 us)
_WIDE = ("-mprefer-vector-width=512",)


def flags() -> tuple[str, ...]:
    """Compiler flags of the kernels for the level in force."""
    if not cpu.is_x86():
        return (*FLAGS, "-march=native")
    return (*FLAGS, _MARCH[cpu.level()], *(_WIDE if cpu.at_least("avx512") else ()))


def _build(compiler: str, build_flags: tuple[str, ...]) -> Path:
    source = SOURCE.read_bytes()
    # the CPU model and flags: ``-march=native`` code must not move to another CPU through a shared cache
    signature = (compiler, *build_flags, cpu.model(), *sorted(cpu.flags()))
    key = hashlib.sha256(source + " ".join(signature).encode()).hexdigest()[:16]
    target = _cache_dir() / f"mixq_kernels_{cpu.level()}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *build_flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[:500]}")
        os.replace(built, target)
    return target


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    # called by every op on every call: the environment decides which build is in force, so it is the key
    return _load_by_environment(os.environ.get("MIXQ_NATIVE", "1"), os.environ.get(cpu.ENV, ""))


@functools.cache
def _load_by_environment(enabled: str, _isa: str) -> tuple[ctypes.CDLL | None, str | None]:
    if enabled == "0":
        return None, "disabled by MIXQ_NATIVE=0"
    return _load_for(flags())


@functools.cache
def _load_for(build_flags: tuple[str, ...]) -> tuple[ctypes.CDLL | None, str | None]:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler found (set $CC or install gcc)"
    try:
        lib = ctypes.CDLL(str(_build(compiler, build_flags)))
    except (OSError, RuntimeError) as error:
        return None, f"building the native kernels failed: {error}"
    pointer, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    for name in (*_CSR.values(), *_CSR_PACKED.values()):
        function = getattr(lib, name)
        function.restype = i32
        function.argtypes = [pointer] * 5 + [i64] * 3 + [i32, pointer, pointer]
    lib.csr_structure.restype = i32
    lib.csr_structure.argtypes = [pointer] * 2 + [i64] * 3 + [i32, pointer]
    for name in (*_QUANTIZE.values(), *_REQUANTIZE.values()):
        function = getattr(lib, name)
        function.restype = i32
        function.argtypes = [pointer] * 3 + [i64] * 2 + [i32, f32, f32, i32, pointer]
    for name in (*_QUANTIZE_LINEAR.values(), *_QUANTIZE_LINEAR_PACKED.values()):
        function = getattr(lib, name)
        function.restype = i32
        function.argtypes = [pointer] + [f32] * 4 + [pointer, i32, pointer] + [i64] * 3 + [i32, pointer, pointer]
    for name in _GEMMS.values():
        function = getattr(lib, name)
        function.restype = i32
        function.argtypes = [pointer] + [i64] * 3 + [pointer, i64, pointer, i32, pointer, pointer]
    lib.amx_available.restype = i32
    lib.amx_available.argtypes = []
    lib.count_nonzero_rows.restype = i64
    lib.count_nonzero_rows.argtypes = [pointer, i64, i64, i64]
    lib.pack_codes.restype = None
    lib.pack_codes.argtypes = [pointer, i64, i64, i32, i32, i32, pointer]
    return lib, None


class _Requant(ctypes.Structure):
    """``requant_t`` of native_kernels.c."""

    _fields_ = [("multiplier", ctypes.c_void_p), ("zero", ctypes.c_void_p), ("qmin", ctypes.c_float),
                ("qmax", ctypes.c_float), ("codes", ctypes.c_void_p), ("values", ctypes.c_void_p)]  # fmt: skip


@dataclass(frozen=True)
class Epilogue:
    """An instruction fused onto a kernel's int32 rows: a requantize (``multiplier`` float32 and ``zero`` integer,
    per tensor or per channel, and the int8 code range), or with ``zero`` None the dequantize of an output
    (``acc * multiplier``, the output's scale: :meth:`dequantize`). See :func:`supports_epilogue`."""

    multiplier: Tensor
    zero: Tensor | None
    qmin: int = 0
    qmax: int = 0

    @classmethod
    def dequantize(cls, scale: Tensor) -> Epilogue:
        return cls(scale, None)

    @property
    def dequantizes(self) -> bool:
        return self.zero is None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of what it writes."""
        return torch.float32 if self.dequantizes else container_dtype(self.qmin, self.qmax)

    def apply(self, acc: Tensor) -> Tensor:
        """The instruction on its own, for the paths whose kernel does not take it."""
        if self.dequantizes:
            return K.dequantize_acc(acc, self.multiplier)
        return torch.ops.mixq.requantize(acc, self.multiplier, self.zero, self.qmin, self.qmax)


@dataclass(frozen=True)
class PackedCodes:
    """How a uint8 table holds packed codes: ``bits`` (2 or 4) a code, stored as ``code - qmin``, ``channels``
    codes a row (:mod:`.packed` has the layout)."""

    bits: int
    qmin: int
    channels: int


def supports_epilogue(epilogue: Epilogue, channels: int) -> bool:
    """Whether the native kernels apply this epilogue on their rows: a requantize to int8 codes with parameters as
    :func:`supports_requantize` takes them, or a dequantize by a float32 scale per tensor or per channel."""
    if epilogue.dequantizes:
        return epilogue.multiplier.dtype == torch.float32 and _per_tensor_or_channel(channels, epilogue.multiplier)
    return epilogue.dtype == torch.int8 and _requantize_parameters(epilogue.multiplier, epilogue.zero, channels)


def _requant(epilogue: Epilogue | None, rows: int, channels: int) -> tuple[Tensor, tuple, object]:
    """(int32 output or int8 codes, tensors to keep alive, the ``requant_t`` pointer or None)."""
    if epilogue is None:
        return buffers.empty((rows, channels), torch.int32), (), None
    m = channel_vector(epilogue.multiplier, channels, torch.float32)
    out = buffers.empty((rows, channels), epilogue.dtype)
    if epilogue.dequantizes:
        spec = _Requant(m.data_ptr(), None, 0.0, 0.0, None, out.data_ptr())
        return out, (m, spec), ctypes.byref(spec)
    z = channel_vector(epilogue.zero, channels, torch.float32)
    spec = _Requant(m.data_ptr(), z.data_ptr(), float(epilogue.qmin), float(epilogue.qmax), out.data_ptr(), None)
    return out, (m, z, spec), ctypes.byref(spec)


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` (warned once) when it cannot be built here."""
    lib, reason = _load()
    if lib is None and reason is not None:
        _warn_once(reason)
    return lib


def unavailable_reason() -> str | None:
    return _load()[1]


@functools.cache
def _warn_once(reason: str) -> None:
    message = f"mixq_compile: native kernels unavailable ({reason}); the mixq:: ops use ATen code"
    warnings.warn(message, stacklevel=3)


def supports_csr_sum(table: Tensor, weight: Tensor | None, packed: PackedCodes | None = None) -> bool:
    """Whether the native kernel computes this aggregation: integer codes (or ``packed`` ones) on the CPU, integer
    edge weights."""
    integer_weight = weight is None or not weight.is_floating_point()
    codes = table.dtype in _CSR if packed is None else table.dtype == torch.uint8
    return table.device.type == "cpu" and codes and integer_weight and library() is not None


def _channels(x: Tensor) -> int:
    return x.shape[-1] if x.dim() else 1


def _per_tensor_or_channel(channels: int, *params: Tensor) -> bool:
    return all(t.numel() in (1, channels) and t.dim() <= 1 for t in params)


def _requantize_parameters(multiplier: Tensor, zero: Tensor, channels: int) -> bool:
    """A float32 multiplier (a float64 one would make the instruction compute in float64) and integer zero-points,
    per tensor or per channel."""
    return (
        multiplier.dtype == torch.float32
        and not zero.is_floating_point()
        and _per_tensor_or_channel(channels, multiplier, zero)
    )


def supports_quantize(x: Tensor, scale: Tensor, zero: Tensor, code: torch.dtype) -> bool:
    """Whether the native kernel quantizes this: float32 on the CPU, per-tensor or per-last-dim parameters."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and code in _QUANTIZE
        and _per_tensor_or_channel(_channels(x), scale, zero)
        and library() is not None
    )


def supports_requantize(acc: Tensor, multiplier: Tensor, zero: Tensor, code: torch.dtype) -> bool:
    """Whether the native kernel requantizes this: int32 accumulators on the CPU, parameters as
    :func:`_requantize_parameters` takes them."""
    return (
        acc.device.type == "cpu"
        and acc.dtype == torch.int32
        and code in _REQUANTIZE
        and _requantize_parameters(multiplier, zero, _channels(acc))
        and library() is not None
    )


def quantize(
    x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int, code: torch.dtype, refuse_non_finite: bool = False
) -> Tensor:
    """``mixq::quantize`` in native code (call only where :func:`supports_quantize` holds). With
    ``refuse_non_finite`` (an input layer's features) raises :class:`~mixq_compile.errors.InputValueError` if ``x``
    holds NaN or infinite values, found in the same pass."""
    out, bad = _elementwise(_QUANTIZE[code], x, scale, zero, qmin, qmax, code)
    if bad and refuse_non_finite:
        raise non_finite_error(NODE_FEATURES)
    return out


def requantize(
    acc: Tensor, multiplier: Tensor, zero: Tensor, qmin: int, qmax: int, code: torch.dtype, out: Tensor | None = None
) -> Tensor:
    """``mixq::requantize`` in native code (call only where :func:`supports_requantize` holds); into ``out`` (a
    contiguous tensor of ``acc``'s shape and dtype ``code``) when given."""
    return _elementwise(_REQUANTIZE[code], acc, multiplier, zero, qmin, qmax, code, out)[0]


def _elementwise(
    kernel: str,
    x: Tensor,
    scale: Tensor,
    zero: Tensor,
    qmin: int,
    qmax: int,
    code: torch.dtype,
    out: Tensor | None = None,
) -> tuple[Tensor, bool]:
    """One of the per-element kernels over the last dim, with per-tensor or per-channel float32 parameters: the
    codes, and whether an input was NaN or infinite."""
    out = buffers.empty(x.shape, code) if out is None else out
    channels = x.shape[-1] if x.dim() else 1
    if x.numel() == 0:
        return out, False
    x = x.contiguous()
    per_channel = int(scale.numel() > 1 or zero.numel() > 1)
    scale, zero = (channel_vector(t, channels if per_channel else 1, torch.float32) for t in (scale, zero))
    bad = getattr(library(), kernel)(
        x.data_ptr(),
        scale.data_ptr(),
        zero.data_ptr(),
        x.numel() // channels,
        channels,
        per_channel,
        float(qmin),
        float(qmax),
        torch.get_num_threads(),
        out.data_ptr(),
    )
    return out, bool(bad)


def csr_sum(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    epilogue: Epilogue | None = None,
    packed: PackedCodes | None = None,
) -> Tensor:
    """``mixq::csr_sum`` on integer codes in native code (call only where :func:`supports_csr_sum` holds), int32;
    with an ``epilogue`` (where :func:`supports_epilogue` holds) what it writes. With ``packed``,
    ``table`` is a packed uint8 table of ``packed.channels`` codes a row (see :mod:`.packed`)."""
    channels = table.shape[1] if packed is None else packed.channels
    src, table = src.contiguous().to(torch.int64), table.contiguous()
    rowptr = csr_rows(dst.contiguous().to(torch.int64), src, table.shape[0], rows)
    weights = None if weight is None else weight.reshape(-1).to(torch.int32).contiguous()
    if weights is not None and weights.numel() != src.numel():
        raise ValueError(f"mixq::csr_sum: {weights.numel()} edge weights for {src.numel()} edges")
    out, alive, requant = _requant(epilogue, rows, channels)
    base = channel_vector(zero, channels, torch.int32, 0 if packed is None else packed.qmin)  # see packed codes
    kernel = _CSR[table.dtype] if packed is None else _CSR_PACKED[packed.bits]
    status = getattr(library(), kernel)(
        rowptr.data_ptr(),
        src.data_ptr(),
        None if weights is None else weights.data_ptr(),
        table.data_ptr(),
        base.data_ptr(),
        src.shape[0],
        rows,
        channels,
        torch.get_num_threads(),
        out.data_ptr(),
        requant,
    )
    del alive
    if status:
        raise MemoryError(f"mixq::csr_sum: {_ERRORS.get(status, f'native kernel error {status}')}")
    return out


#: the attribute of a target-sorted ``dst`` tensor that holds its checked row pointers (:func:`csr_rows`)
_CSR_ROWS = "_mixq_csr_rows"


def csr_rows(dst: Tensor, src: Tensor, nodes: int, rows: int) -> Tensor:
    """The row pointers (int64 ``[rows + 1]``) of the edges ``(src, dst)`` sorted by target (contiguous int64),
    once ``dst`` is checked sorted in ``[0, rows)`` and ``src`` in ``[0, nodes)`` (``csr_structure`` in
    native_kernels.c; ``ValueError`` naming the bad input otherwise).

    The kernels index with these without checking again, and the checks read every edge twice (1M nodes, 10M edges,
    2 threads: 15.6 ms, a fifth of a 16-channel aggregation). A program gets its sorted edges from the structure
    program, whose outputs are cached per graph, so each aggregation is handed the same tensors call after call: the
    result is kept on the ``dst`` tensor itself with ``src`` and the versions of both (it lives and dies with the
    graph, an in-place change of either tensor by a torch op is seen, and a tensor holding it still pickles: a weak
    reference would not). Writes that bypass torch's version counters (through a NumPy view) are not seen: these
    are the structure program's own outputs, which nothing else writes. Inference-mode tensors have no version
    counter and are checked on every call."""
    memo = not (dst.is_inference() or src.is_inference())
    key = (dst._version, src._version, nodes, rows) if memo else None
    held = getattr(dst, _CSR_ROWS, None) if memo else None
    if held is not None and held[0] == key and held[1] is src:
        return held[2]
    if dst.numel() != src.numel():
        raise ValueError(f"mixq::csr_sum: {dst.numel()} edge targets (dst) but {src.numel()} sources (src)")
    rowptr = torch.empty(rows + 1, dtype=torch.int64)
    status = library().csr_structure(
        dst.data_ptr(), src.data_ptr(), src.numel(), nodes, rows, torch.get_num_threads(), rowptr.data_ptr()
    )
    if status:
        raise ValueError(f"mixq::csr_sum: {_ERRORS.get(status, f'native kernel error {status}')}")
    if memo:
        setattr(dst, _CSR_ROWS, (key, src, rowptr))
    return rowptr


def supports_quantize_linear(
    x: Tensor, scale: Tensor, zero: Tensor, w_t: Tensor, packed: PackedCodes | None = None
) -> bool:
    """Whether the native fused kernel applies: float32 features on the CPU, per-tensor input grid, int8/int16
    weights or packed ones."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() >= 1
        and scale.numel() == 1
        and zero.numel() == 1
        and (w_t.dtype in _QUANTIZE_LINEAR if packed is None else w_t.dtype == torch.uint8)
        and library() is not None
    )


def quantize_linear(
    x: Tensor,
    scale: Tensor,
    zero: Tensor,
    qmin: int,
    qmax: int,
    w_t: Tensor,
    bias: Tensor | None,
    epilogue: Epilogue | None = None,
    packed: PackedCodes | None = None,
) -> Tensor:
    """``linear_int(quantize(x), ...)`` in one native pass that skips zero features (call only where
    :func:`supports_quantize_linear` holds), int32, or with an ``epilogue`` what it writes; raises
    :class:`~mixq_compile.errors.InputValueError` if a feature is NaN or infinite. With ``packed``, ``w_t`` is a
    packed uint8 table of ``packed.channels`` output features a row."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    w_t = w_t.contiguous()
    outputs = w_t.shape[1] if packed is None else packed.channels
    out, alive, requant = _requant(epilogue, rows.shape[0], outputs)
    bias32 = None if bias is None else channel_vector(bias, outputs, torch.int32)
    kernel = _QUANTIZE_LINEAR[w_t.dtype] if packed is None else _QUANTIZE_LINEAR_PACKED[packed.bits]
    status = getattr(library(), kernel)(
        rows.data_ptr(),
        float(scale),
        float(zero),
        float(qmin),
        float(qmax),
        w_t.data_ptr(),
        0 if packed is None else packed.qmin,
        None if bias32 is None else bias32.data_ptr(),
        rows.shape[0],
        rows.shape[1],
        outputs,
        torch.get_num_threads(),
        out.data_ptr(),
        requant,
    )
    del alive
    if status == 4:
        raise non_finite_error(NODE_FEATURES)
    if status:
        raise MemoryError(f"mixq::quantize_linear: {_ERRORS[status]}")
    return out.reshape(*x.shape[:-1], outputs)


def amx_ready() -> bool:
    """Whether the AMX GEMM runs here: level "amx" in force, the kernels built, and the OS granting this process
    the tile state (Linux ``arch_prctl``, asked once)."""
    lib = library() if cpu.at_least("amx") else None
    return lib is not None and _amx_granted(lib)


def pairs_ready() -> bool:
    """Whether the int16-pair GEMM (``gemm_s8_pairs``: AVX2 ``vpmaddwd``) is the int8 GEMM here: the kernels
    built for level "avx2" or "avx512", whose CPUs have no int8 dot-product instruction (from "vnni" on, oneDNN's
    VNNI kernel behind ``torch._int_mm`` is faster)."""
    return cpu.level() in ("avx2", "avx512") and library() is not None


@functools.cache
def _amx_granted(lib: ctypes.CDLL) -> bool:
    """The OS's answer for this process (asked once; every GEMM dispatch reads it)."""
    return bool(lib.amx_available())


def gemm(path: str, flat: Tensor, w_t: Tensor, offset: Tensor, epilogue: Epilogue | None = None) -> Tensor:
    """``flat @ w_t + offset`` in int32 (wrap-around) for int8 ``[M, K]`` codes and ``[K, N]`` weights by the
    native GEMM of ``path`` ("int8_amx": AMX tiles, call only where :func:`amx_ready` holds; "int8_pairs": AVX2
    int16 pairs, only where :func:`pairs_ready` holds), or with an ``epilogue`` what it writes."""
    flat, w_t = flat.contiguous(), w_t.contiguous()
    offset = channel_vector(offset, w_t.shape[1], torch.int32)
    if 0 in (*flat.shape, w_t.shape[1]):  # nothing to multiply: each row is its offset
        acc = offset.expand(flat.shape[0], w_t.shape[1]).clone()
        return acc if epilogue is None else epilogue.apply(acc)
    out, alive, requant = _requant(epilogue, flat.shape[0], w_t.shape[1])
    status = getattr(library(), _GEMMS[path])(
        flat.data_ptr(),
        flat.shape[0],
        flat.shape[1],
        flat.shape[1],
        w_t.data_ptr(),
        w_t.shape[1],
        offset.data_ptr(),
        torch.get_num_threads(),
        out.data_ptr(),
        requant,
    )
    del alive
    if status:
        raise RuntimeError(f"mixq::linear_int: the {path} kernel failed ({_ERRORS.get(status, f'status {status}')})")
    return out


def pack_codes(codes: Tensor, qmin: int, bits: int, stride: int) -> Tensor:
    """Packed uint8 ``[rows, stride]`` of int8 ``codes`` in ``[qmin, qmin + 2**bits)`` (native code; call only
    where :func:`library` is not None)."""
    rows = codes.reshape(-1, codes.shape[-1]).contiguous()
    out = buffers.empty((rows.shape[0], stride), torch.uint8)
    library().pack_codes(
        rows.data_ptr(), rows.shape[0], rows.shape[1], bits, qmin, torch.get_num_threads(), out.data_ptr()
    )
    return out


def count_nonzero_rows(rows: Tensor, step: int, samples: int) -> int:
    """Non-zero entries of ``samples`` rows of a contiguous float32 ``[n, in]`` tensor, ``step`` rows apart (call
    only where :func:`library` is not None)."""
    return library().count_nonzero_rows(rows.data_ptr(), rows.shape[1], step, samples)
