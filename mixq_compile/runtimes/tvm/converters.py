"""Everything the ``tvm`` backend translates, as one explicit table passed to :class:`~.translator.Converter`: the
integer instructions and fused ``mixq::`` operators, the core float ATen ops, the tensor-moving ops and the
activations, plus the modules a captured graph holds."""

from __future__ import annotations

from ..converter_table import Converters
from .activations import ACTIVATION_CONVERTERS
from .float_ops import FLOAT_CONVERTERS, MODULE_CONVERTERS
from .integer_ops import INTEGER_CONVERTERS
from .tensor_ops import TENSOR_CONVERTERS

CONVERTERS = Converters(
    {**INTEGER_CONVERTERS, **FLOAT_CONVERTERS, **TENSOR_CONVERTERS, **ACTIVATION_CONVERTERS}, MODULE_CONVERTERS
)
