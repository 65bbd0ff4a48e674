"""``lower``: a frozen quantized model to an :class:`~mixq_compile.ir.program.IntegerProgram` (the lowering driver).

The pipeline: ``lower_integer`` (fake quantizers to integer instructions), then ``split_structure`` (topology-only
work apart from feature work).
"""

from __future__ import annotations

from torch import nn

from ..ir.meta import FLOAT_OPS_KEY, SITES_KEY
from ..ir.program import IntegerProgram
from ..passes.split_structure import split_structure
from .lower_integer import lower_integer


def lower(frozen: nn.Module, *, fixed_point: bool = False) -> IntegerProgram:
    """Lower a frozen :class:`~mixq_compile.quantized_model.QuantizedModel` (or any captured model wrapper with
    ``graph_module`` and ``signature``) to an :class:`IntegerProgram`.

    ``fixed_point=True`` requantizes with integer mantissa/shift pairs instead of float multipliers."""
    gm = lower_integer(frozen.graph_module, fixed_point=fixed_point)
    codegen = gm.graph._codegen
    out_spec = codegen.pytree_info.out_spec if getattr(codegen, "pytree_info", None) is not None else None
    split = split_structure(gm)
    site_bits = {name: info["bits"] for name, info in gm.meta[SITES_KEY].items()}
    return IntegerProgram(
        split.structure,
        split.features,
        frozen.signature,
        site_bits,
        gm.meta[FLOAT_OPS_KEY],
        split.frontier,
        out_spec,
    )
