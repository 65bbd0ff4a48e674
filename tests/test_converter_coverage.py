"""Every backend translates every integer instruction: one coverage test per backend, over its explicit table.

The tables are plain data (``converters.py`` of each backend), so a new instruction without a converter fails here,
before any model meets it in an export.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mixq_compile.ir import instructions as K
from mixq_compile.ir.modes import ModeBatchNorm, ModeDropout
from mixq_compile.runtimes.torch.integer_ops import INTEGER_OPS, OP_BY_OP_OPS

#: the fused operators lowering emits for a backend (beyond the instruction set)
FUSED_FOR_TVM = {torch.ops.mixq.quantize_linear.default}


def test_the_onnx_backend_converts_every_instruction_and_mode_module():
    from mixq_compile.runtimes.onnx.converters import CONVERTERS

    missing = {name for name, f in K.INSTRUCTIONS.items() if f not in CONVERTERS.functions}
    assert not missing, f"onnx has no converter for {sorted(missing)}"
    assert {ModeDropout, ModeBatchNorm} <= set(CONVERTERS.modules)


@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="Apache TVM is not installed (extra [tvm])")
def test_the_tvm_backend_converts_every_instruction_and_the_fused_ops_lowering_gives_it():
    from mixq_compile.runtimes.tvm.converters import CONVERTERS

    missing = {name for name, f in K.INSTRUCTIONS.items() if f not in CONVERTERS.functions}
    assert not missing, f"tvm has no converter for {sorted(missing)}"
    assert FUSED_FOR_TVM <= set(CONVERTERS.functions)
    assert ModeBatchNorm in CONVERTERS.modules


def test_the_torch_backend_retargets_only_instructions_to_registered_mixq_ops():
    """torch runs every instruction as its ATen reference unless the table names a ``mixq::`` kernel for it."""
    instructions = set(K.INSTRUCTIONS.values())
    for table in (INTEGER_OPS, OP_BY_OP_OPS):
        assert set(table) <= instructions
        for op in table.values():
            assert op.namespace == "mixq"
            assert torch._C._dispatch_has_kernel(op.name()), f"{op} has no kernel"


def test_the_converter_lookup_reports_a_missing_op():
    from torch import fx, nn

    from mixq_compile.runtimes.converter_table import Converters

    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.cumsum.default, (x, 0)))
    gm = fx.GraphModule(nn.Module(), graph)
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    assert Converters({}, {}).lookup(gm, node) is None
    assert Converters({torch.ops.aten.cumsum.default: len}, {}).lookup(gm, node) is len
