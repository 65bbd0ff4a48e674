"""The integer program: what ``freeze`` + lowering (:func:`mixq_compile.lower`) produce, and the PyTorch reference
executor of it.

An :class:`IntegerProgram` is two ``torch.fx`` graphs over :mod:`mixq_compile.ir.instructions` and ATen ops:
``structure`` (topology-only preprocessing: self loops, normalisation, edge-weight codes) and ``features`` (the
integer computation on node features). Calling the program runs both with real integer kernels; it is the ground
truth every exported backend is compared with.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from .signature import Signature


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
