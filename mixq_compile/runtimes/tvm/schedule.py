"""Schedules of the TVM backend for what Relax legalizes (the hand-written kernels are already scheduled), and the
compilation pipeline that applies them."""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline


def static_extent(dim: object) -> int | None:
    """A size as a Python int when it is known at compile time, else ``None``."""
    if isinstance(dim, int):
        return dim
    return dim.value if isinstance(dim, tirx.IntImm) else None


class CpuSpatial(ScheduleRule):
    """Generic CPU schedule for the fused elementwise functions Relax legalizes: inline the chain, then run the
    outer loops in parallel and vectorize a static innermost loop. (dlight's CPU rules only cover GEMV and
    reductions, so without this every quantize/requantize over ``[N, C]`` would run on one core, scalar.)"""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or any(sch.get(info.block_rv).init is not None for info in infos):
            # A reduction over an axis of size 1 normalizes to an all-spatial block that still has an init:
            # inlining an epilogue into it would apply the epilogue in both init and update (wrong results).
            return None
        infos = try_inline(sch, infos)
        if not all(info.is_injective() for info in infos):
            return None
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            if not loops:
                continue
            inner = static_extent(sch.get(loops[-1]).extent)
            if len(loops) > 1 and inner is not None and 1 < inner <= 1024:
                sch.vectorize(loops[-1])
                loops = loops[:-1]
            sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
        return sch


def pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline with schedules between legalization and lowering (hand-written kernels are already
    scheduled; reductions get dlight's CPU rule, elementwise functions :class:`CpuSpatial`)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = [
                relax.transform.DeadCodeElimination(),
                *cpu.library_dispatch_passes(target),
                *cpu.legalize_passes(target),
                dlight.ApplyDefaultSchedule(dlight.cpu.Reduction(), CpuSpatial()),
                *cpu.dataflow_lower_passes(target),
                *cpu.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return run
