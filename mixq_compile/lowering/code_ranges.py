"""The static range a feature program's codes are clamped to: the ``(qmin, qmax)`` arguments of the quantize or
requantize (or requantize epilogue) that produced them. The packing pass reads it to choose a packed width, and the
ReLU fold raises its lower end."""

from __future__ import annotations

import torch
from torch import fx

from ..ir import instructions as K

mixq = torch.ops.mixq

#: ops whose output codes are clamped to [args[i], args[i + 1]]: index of qmin
CLAMPED_AT = {
    K.quantize: 3,
    K.requantize: 3,
    mixq.quantize.default: 3,
    mixq.requantize.default: 3,
    mixq.csr_sum_requantize.default: -2,
    mixq.csr_sum_packed_requantize.default: -2,
    mixq.csr_sum_narrow_requantize.default: -2,
    mixq.quantize_linear_requantize.default: -2,
    mixq.quantize_linear_packed_requantize.default: -2,
    mixq.linear_int_requantize.default: -2,
}


def code_range(node: object) -> tuple[int, int] | None:
    """The static ``(qmin, qmax)`` the codes of ``node`` are clamped to, where the program states it."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target is K.relu_codes:  # max(q, zero): still inside q's range
        return code_range(node.args[0])
    at = CLAMPED_AT.get(node.target)
    if at is None:
        return None
    qmin, qmax = node.args[at], node.args[at + 1]
    return (qmin, qmax) if isinstance(qmin, int) and isinstance(qmax, int) else None
