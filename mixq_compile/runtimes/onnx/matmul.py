"""Which ``MatMulInteger`` formulation is exact on the CPU that runs an ONNX artifact, and the rewrite between them.

The converter emits every integer GEMM as ``MatMulInteger(u8 codes, s8 weights, a_zero)``: the fast form where
onnxruntime's kernel is a VNNI ``vpdpbusd`` (exact int32 sums). On x86 without VNNI (AVX2, AVX-512F/BW) the same
op runs ``vpmaddubsw``, whose int16 pair sums saturate: 2 × 255 × 127 > 32767, so large codes give wrong answers
with no error (measured: errors of 2.5e6 on an emulated Zen 3, and 0.41 on a real MLP's outputs). The u8 × u8
form (weights stored as ``w + 128`` with ``b_zero_point = 128``) runs a kernel that widens both operands to int16
before ``vpmaddwd``, which is exact on every CPU, at about 0.4× the VNNI speed (Cora-sized GEMMs, this project's
VNNI EPYC: 6.2 vs 2.5 ms).

So: ``"u8s8"`` where :func:`mixq_compile.cpu.level` is ``"vnni"``, ``"u8u8"`` elsewhere. :func:`as_u8u8` turns a
u8 × s8 model into the exact u8 × u8 one without changing any result; export uses it for the exporting CPU, load
for the loading CPU (an artifact exported on a VNNI machine is rewritten in memory when it lands on an AVX2 one).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ... import cpu

FORMULATIONS = ("auto", "u8s8", "u8u8")
_OFFSET = 128


def exact_formulation() -> str:
    """The fast formulation that is exact on the CPU in force."""
    return "u8s8" if cpu.at_least("vnni") else "u8u8"


def resolve(formulation: str) -> str:
    if formulation not in FORMULATIONS:
        raise ValueError(f"onnx matmul formulation {formulation!r} is unknown; use one of {FORMULATIONS}")
    return exact_formulation() if formulation == "auto" else formulation


def signed_weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """``MatMulInteger`` nodes with int8 weights and no weight zero-point (the converter's u8 × s8 form)."""
    return [n for n in model.graph.node if n.op_type == "MatMulInteger" and len(n.input) == 3]


def as_u8u8(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose u8 × s8 ``MatMulInteger`` nodes read ``w + 128`` as uint8 with zero-point 128.

    ``(a - z_a)(w + 128 - 128) = (a - z_a) w``: the same int32 result. An int8 initializer is re-encoded in place;
    a computed weight (packed INT4/INT2 initializers cast to int8) gets ``Cast -> Add 128 -> Cast`` in front,
    which onnxruntime folds into a constant when the session starts.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    zero_name = "mixq_u8u8_weight_zero"
    graph.initializer.append(numpy_helper.from_array(np.array(_OFFSET, np.uint8), zero_name))
    new_nodes = []
    for node in graph.node:
        if node.op_type == "MatMulInteger" and len(node.input) == 3:
            weight = node.input[1]
            init = initializers.get(weight)
            if init is not None and init.data_type == TensorProto.INT8 and readers[weight] == 1:
                shifted = (numpy_helper.to_array(init).astype(np.int16) + _OFFSET).astype(np.uint8)
                init.CopyFrom(numpy_helper.from_array(shifted, weight))
            else:
                wide, plus, unsigned = (f"{weight}_u8u8_{s}" for s in ("i16", "plus", "u8"))
                offset = f"{weight}_u8u8_offset"
                graph.initializer.append(numpy_helper.from_array(np.array(_OFFSET, np.int16), offset))
                new_nodes += [
                    helper.make_node("Cast", [weight], [wide], to=TensorProto.INT16),
                    helper.make_node("Add", [wide, offset], [plus]),
                    helper.make_node("Cast", [plus], [unsigned], to=TensorProto.UINT8),
                ]
                node.input[1] = unsigned
            node.input.append(zero_name)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return out


def formulation_here(written: str) -> str:
    """The formulation a model written with ``written`` runs with on this CPU (u8 × s8 becomes u8 × u8 where it
    would saturate)."""
    return "u8u8" if written == "u8s8" and exact_formulation() == "u8u8" else written


def for_this_cpu(model: onnx.ModelProto, written: str) -> onnx.ModelProto:
    """``model`` (exported with ``written``) in the form :func:`formulation_here` says is exact here."""
    if formulation_here(written) != written and signed_weight_matmuls(model):
        return as_u8u8(model)
    return model
