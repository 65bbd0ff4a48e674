"""The integer program: what ``freeze`` + lowering produce, and the PyTorch reference executor of it.

An :class:`IntegerProgram` is two ``torch.fx`` graphs over :mod:`mixq_compile.integer.kernels` and ATen ops:
``structure`` (topology-only preprocessing: self loops, normalisation, edge-weight codes) and ``features`` (the
integer computation on node features). Calling the program runs both with real integer kernels; it is the ground
truth every exported backend is compared with.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ..passes.lower_integer import FLOAT_OPS_KEY, SITES_KEY, lower_integer
from ..passes.split_structure import split_structure
from ..signature import Signature


class IntegerProgram(nn.Module):
    """Structure and feature programs of a lowered model, with its input signature.

    Attributes:
        structure: ``structure(*inputs) -> frontier`` tensors (depends only on topology and input shapes).
        features: ``features(*inputs, *frontier) -> outputs`` (integer kernels; float only where listed).
        signature: the captured input signature (names, dtypes, dynamic dims, shape guards, node-id rules).
        site_bits: site name -> bit-width of every quantizer that was lowered.
        float_ops: ops that read quantized values but run in float (dequantized), e.g. batch norm.
        frontier: names of the structure tensors handed from ``structure`` to ``features``.
    """

    def __init__(
        self,
        structure: fx.GraphModule,
        features: fx.GraphModule,
        signature: Signature,
        site_bits: dict[str, int],
        float_ops: tuple[str, ...],
        frontier: tuple[str, ...],
        out_spec: pytree.TreeSpec | None,
    ) -> None:
        super().__init__()
        self.structure = structure
        self.features = features
        self.signature = signature
        self.site_bits = site_bits
        self.float_ops = float_ops
        self.frontier = frontier
        self.out_spec = out_spec

    def check_inputs(self, args: tuple) -> None:
        self.signature.check(args, "the program")

    def unflatten(self, outputs: tuple | list) -> object:
        outputs = list(outputs)
        if self.out_spec is None:
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        return pytree.tree_unflatten(outputs, self.out_spec)

    @torch.no_grad()
    def forward(self, *inputs: Tensor) -> object:
        self.check_inputs(inputs)
        frontier = self.structure(*inputs)
        return self.unflatten(self.features(*inputs, *frontier))


def lower(frozen: nn.Module, *, fixed_point: bool = False) -> IntegerProgram:
    """Lower a frozen :class:`~mixq_compile.model.QuantizedModel` (or any captured model wrapper with
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
