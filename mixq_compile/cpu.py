"""What this CPU can run: its model, its vector instruction sets, and the kernel level every backend dispatches on.

Integer kernels are exact only on the instructions they were written for. The trap on x86 is the u8 × s8 byte dot
product: with AVX-512 VNNI / AVX-VNNI (``vpdpbusd``) it accumulates straight into int32 and is exact; without VNNI
(AVX2, AVX-512 without VNNI) libraries fall back to ``vpmaddubsw``, whose int16 pair sums *saturate* (onnxruntime's
``MatMulInteger`` u8 × s8 gave answers 0.41 off on an AVX2-only EPYC). So every backend asks this module which
level is in force and picks an exact kernel for it:

- ``"vnni"``: x86 with AVX-512 VNNI or AVX-VNNI: exact and fast u8 × s8 (``torch._int_mm``, ORT u8 × s8, TVM
  ``vpdpbusd`` where the 512-bit form exists);
- ``"amx"``: "vnni" plus AMX-INT8 tiles (Sapphire Rapids and later): the torch backend's int8 GEMM runs on tiles;
- ``"avx512"``: AVX-512 without VNNI; ``"avx2"``: AVX2 + FMA; ``"portable"``: anything else (or non-x86).

``MIXQ_ISA`` (``portable`` | ``avx2`` | ``avx512`` | ``vnni`` | ``native``) forces a *lower* level than the
CPU's, so a VNNI or AMX machine builds and tests what an AVX2 or baseline machine runs; asking for a level the CPU
lacks is an error.
:func:`describe` is what manifests and benchmarks record.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

#: levels from least to most capable; each implies the ones before it (AVX-VNNI without AVX-512 counts as "vnni"
#: for dot products but reports ``avx512=False``).
LEVELS = ("portable", "avx2", "avx512", "vnni", "amx")
ENV = "MIXQ_ISA"
#: the /proc/cpuinfo flags a manifest records (the ones our kernels or our libraries' kernels dispatch on).
RECORDED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                  "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")  # fmt: skip


class CpuLevelError(ValueError):
    """``MIXQ_ISA`` names an unknown level or one this CPU cannot run."""


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in ``/proc/cpuinfo`` (empty flags where it is not readable)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == (platform.processor() or platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def flags() -> frozenset[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (empty where it is not readable)."""
    return _cpuinfo()[1]


def _flag_level(flags: frozenset[str]) -> str:
    if not is_x86() or "avx2" not in flags or "fma" not in flags:
        return "portable"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "amx" if {"amx_tile", "amx_int8", "avx512f"} <= flags else "vnni"
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "avx512"
    return "avx2"


#: the highest level compatible with what ATen's own CPUID probe found (``torch.backends.cpu``).
_ATEN_CAP = {"AVX512": "amx", "AVX2": "avx2"}


@functools.cache
def native_level() -> str:
    """The most capable level this CPU runs: from ``/proc/cpuinfo``, capped by ATen's CPUID probe. The cap matters
    where the two disagree, e.g. under an emulator (``qemu-x86_64 -cpu EPYC-Milan``) that passes the host's
    ``/proc/cpuinfo`` through but answers CPUID as the emulated CPU, whose kernels the libraries then pick."""
    level = _flag_level(_cpuinfo()[1])
    import torch

    cap = _ATEN_CAP.get(torch.backends.cpu.get_cpu_capability(), "portable")
    return level if LEVELS.index(level) <= LEVELS.index(cap) else cap


def _wanted() -> str:
    """The level ``MIXQ_ISA`` asks for ("native" when unset or empty)."""
    return os.environ.get(ENV, "native").strip().lower() or "native"


def level() -> str:
    """The level in force: :func:`native_level`, or a lower one forced with ``MIXQ_ISA``."""
    native = native_level()
    wanted = _wanted()
    if wanted == "native":
        return native
    if wanted not in LEVELS:
        raise CpuLevelError(f"{ENV}={wanted!r} is not a kernel level; use one of {['native', *LEVELS]}")
    if LEVELS.index(wanted) > LEVELS.index(native):
        raise CpuLevelError(f"{ENV}={wanted!r} asks for more than this CPU ({model()}) runs: its level is {native!r}")
    return wanted


def at_least(wanted: str) -> bool:
    """Whether the level in force includes ``wanted``."""
    return LEVELS.index(level()) >= LEVELS.index(wanted)


def model() -> str:
    return _cpuinfo()[0]


def describe() -> dict:
    """What manifests and benchmark results record about the CPU they ran on."""
    return {
        "model": model(),
        "machine": platform.machine(),
        "level": level(),
        "native_level": native_level(),
        "forced": _wanted() != "native",
        "flags": [f for f in RECORDED_FLAGS if f in flags()],
        "threads": _threads(),
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def summary() -> str:
    """One line for tables and logs, e.g. ``AMD EPYC [avx2, forced from vnni; sse4_2 avx avx2 fma ...]``."""
    info = describe()
    forced = f", forced from {info['native_level']}" if info["forced"] else ""
    return f"{info['model']} [{info['level']}{forced}; {' '.join(info['flags']) or 'no vector flags'}]"
