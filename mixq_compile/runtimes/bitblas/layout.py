"""bitBLAS data layout and the glue op, in plain torch (shared by the exporting process and the bitBLAS worker).

This module imports nothing but torch: the main process uses it to plan and pack without bitBLAS (whose bundled TVM
fork cannot share a process with apache-tvm), and the worker uses the same definitions so both sides agree on the
layout bit for bit.

Weight storage (bitBLAS 0.1.0.post1, ``Matmul.transform_weight`` + ``QuantCompress`` for ``source_format="int"``,
decoded by ``_tir_packed_to_signed_convert``): layout ``"nt"`` keeps ``W`` as ``[N, K]``; a ``b``-bit signed code
``w`` (b < 8) is stored offset-binary as ``w + 2**(b-1)`` and ``8 // b`` consecutive K elements share one byte,
element ``j`` in bits ``[b*j, b*(j+1))`` (low bits first). 8-bit codes are stored as they are. ``K`` is padded up
to whole bytes with code 0, which contributes nothing to the product.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

#: the bitBLAS release whose layout this module reproduces (the worker warns on any other version).
BITBLAS_VERSION = "0.1.0.post1"

#: storage widths bitBLAS decodes on the fly, as ``W_dtype`` names by container bits.
W_DTYPES = {2: "int2", 4: "int4", 8: "int8"}


def container_bits(bits: int) -> int:
    """The narrowest bitBLAS weight type holding signed ``bits``-bit codes (3-bit codes travel as int4...)."""
    for width in sorted(W_DTYPES):
        if bits <= width:
            return width
    raise ValueError(f"{bits}-bit weights do not fit bitBLAS' int8 weight type")


def elems_per_byte(width: int) -> int:
    return 8 // width


def packed_k(k: int, width: int) -> int:
    """Bytes per weight row (``K`` padded up to whole bytes)."""
    return -(-k // elems_per_byte(width))


@dataclass(frozen=True)
class MatmulPlan:
    """One quantized linear as a bitBLAS matmul: ``out[M, N] = A[M, K] @ W[N, K]^T`` in int32.

    Fields named like ``bitblas.MatmulConfig`` arguments are passed to it unchanged (see :meth:`matmul_config`).
    ``M`` is dynamic (the number of nodes changes per graph): ``M`` lists bitBLAS' dynamic-shape buckets. The
    zero-point fold ``- x_zero * w_sum`` and the bias stay in the torch glue (an int32 epilogue), so the kernel needs
    neither zeros nor scaling nor bias. Weight propagation and fast decoding are switched off so that the packed
    layout is exactly :func:`pack_weight` and does not depend on the GPU's tuning choices.
    """

    layer: str
    site: str
    weight_bits: int
    packed: str
    in_features: int
    M: tuple[int, ...]
    N: int
    K: int
    A_dtype: str = "int8"
    W_dtype: str = "int8"
    accum_dtype: str = "int32"
    out_dtype: str = "int32"
    layout: str = "nt"
    with_bias: bool = False
    with_scaling: bool = False
    with_zeros: bool = False
    storage_dtype: str = "int8"
    fast_decoding: bool = False
    propagate_a: bool = False
    propagate_b: bool = False

    @property
    def width(self) -> int:
        return int(self.W_dtype.removeprefix("int"))

    def matmul_config(self) -> dict:
        """Keyword arguments for ``bitblas.MatmulConfig``."""
        own = {"layer", "site", "weight_bits", "packed", "in_features"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["M"] = list(self.M)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MatmulPlan:
        return cls(**{**data, "M": tuple(data["M"])})


def pack_weight(w_t: Tensor, width: int) -> Tensor:
    """Signed codes stored transposed (``[K, N]``, as ``linear_int`` keeps them) -> bitBLAS ``[N, ceil(K*w/8)]``."""
    w = w_t.t().to(torch.int32)
    lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    if w.numel() and (w.min() < lo or w.max() > hi):
        raise ValueError(f"weight codes in [{int(w.min())}, {int(w.max())}] do not fit int{width} [{lo}, {hi}]")
    if width == 8:
        return w.to(torch.int8).contiguous()
    per_byte = elems_per_byte(width)
    n, k = w.shape
    stored = torch.zeros(n, packed_k(k, width) * per_byte, dtype=torch.int32)
    stored[:, :k] = w + 2 ** (width - 1)
    stored[:, k:] = 2 ** (width - 1)  # padding holds code 0
    shifts = torch.arange(per_byte, dtype=torch.int32) * width
    packed = (stored.reshape(n, -1, per_byte) << shifts).sum(-1)
    return packed.to(torch.uint8).view(torch.int8).contiguous()


def unpack_weight(packed: Tensor, width: int, k: int) -> Tensor:
    """Exact inverse of :func:`pack_weight`: bitBLAS storage -> int8 codes ``[K, N]``."""
    if width == 8:
        return packed.t().contiguous()
    per_byte = elems_per_byte(width)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * width
    fields_ = (packed.view(torch.uint8).to(torch.int32).unsqueeze(-1) >> shifts) & (2**width - 1)
    codes = fields_.reshape(packed.shape[0], -1)[:, :k] - 2 ** (width - 1)
    return codes.t().to(torch.int8).contiguous()


@torch.library.custom_op("mixq_bitblas::matmul", mutates_args=())
def matmul(a: Tensor, packed: Tensor, width: int, k: int) -> Tensor:
    """``a[M, K] (int8) @ W^T`` from packed weights, int32. This is the CPU emulation (unpack, then an exact integer
    matmul); the worker registers the bitBLAS kernel as the CUDA implementation of the same op."""
    return a.to(torch.int32) @ unpack_weight(packed, width, k).to(torch.int32)


@matmul.register_fake
def _matmul_shape(a: Tensor, packed: Tensor, width: int, k: int) -> Tensor:
    return a.new_empty((a.shape[0], packed.shape[0]), dtype=torch.int32)


def bitblas_linear(
    q_x: Tensor, x_zero: Tensor, packed: Tensor, w_sum: Tensor, bias: Tensor | None, width: int, k: int
) -> Tensor:
    """``linear_int`` with the product on the bitBLAS op and the zero-point fold and bias as a torch epilogue."""
    lead = q_x.shape[:-1]
    acc = torch.ops.mixq_bitblas.matmul(q_x.reshape(-1, k), packed, width, k)
    acc = acc - x_zero.to(torch.int32) * w_sum
    if bias is not None:
        acc = acc + bias
    return acc.reshape(*lead, packed.shape[0])
