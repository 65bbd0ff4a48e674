"""The float ops of a program (float islands between integer layers, FP32 baselines) follow PyTorch's semantics on
the onnx and tvm backends: type promotion, boolean sums, masks and negative indices, integer clamps, broadcast
index_put, activations and normalizations. Each case runs on the export graph and on a graph of another size."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv

import mixq_compile as mq
from mixq_compile.runtimes import available_backends

from helpers import random_graph


def _put_rows_under_mask(h: torch.Tensor) -> torch.Tensor:
    h = h.clone()
    h[h[:, 0] > 0] = h.max()  # a 0-d tensor broadcast over the selected rows of a 2-D tensor
    return h


def _put_constant_under_mask(h: torch.Tensor) -> torch.Tensor:
    v = h.sum(1).clone()
    v[v > 0] = 0.0  # a Python constant (lifted into the graph without a recorded shape)
    return h * v.view(-1, 1)


def _put_at_rows(h: torch.Tensor) -> torch.Tensor:
    h = h.clone()
    h[torch.tensor([0, 2, 3])] = h.max()
    return h


CASES = {
    "sum_of_bools_counts": lambda h: (h > 0).sum(1, keepdim=True) * h,
    "int_compared_with_float_scalar": lambda h: ((h * 10).long() < 5.5).float() + h,
    "int_divided_by_int_is_float": lambda h: (h * 10).long() / 4 + h,
    "int_times_float_is_float": lambda h: (h * 10).long() * h,
    "int_clamped_below_only": lambda h: (h * 10).long().clamp(min=0) + h,
    "sqrt_of_int_is_float": lambda h: (h * 10).long().abs().sqrt() + h,
    "negative_index": lambda h: h[torch.tensor([-1, 0])].sum(0, keepdim=True) * h,
    "mean_over_one_head_then_add": lambda h: h.view(-1, 1, h.shape[1]).mean(1) + h,
    "index_put_rows_under_mask": _put_rows_under_mask,
    "index_put_constant_under_mask": _put_constant_under_mask,
    "index_put_at_rows": _put_at_rows,
    # activations, normalizations and arg-reductions of common PyG models (GAT's ELU, log_softmax heads, ...)
    "elu": F.elu,
    "log_softmax": lambda h: F.log_softmax(h, dim=1),
    "gelu": F.gelu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "silu": F.silu,
    "selu": F.selu,
    "softplus": F.softplus,
    "relu6": F.relu6,
    "hardtanh": F.hardtanh,
    "erf": torch.erf,
    "rsqrt": lambda h: h.abs().add(1).rsqrt(),
    "layer_norm_without_affine": lambda h: F.layer_norm(h, (h.shape[1],)),
    "normalize": lambda h: F.normalize(h, p=2.0, dim=-1),
    "max_over_dim": lambda h: h.max(dim=1, keepdim=True).values + h,
    "argmax": lambda h: h.argmax(1),
}


class _AfterConv(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        self.conv, self.op = GCNConv(8, 8), op

    def forward(self, x, edge_index):
        return self.op(self.conv(x, edge_index))


@pytest.mark.parametrize("backend", ["onnx", "tvm"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_float_op_matches_pytorch(case, backend, tmp_path):
    usable, skipped = available_backends([backend])
    if not usable:
        pytest.skip(skipped[backend])
    model = _AfterConv(CASES[case]).eval()
    graphs = random_graph(20, 60, 8), random_graph(31, 90, 8, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        artifact = mq.load_artifact(mq.export(model, graphs[0], tmp_path / "a", backend=backend))
    with torch.no_grad():
        for inputs in graphs:
            expected = model(*inputs)
            got = artifact(*inputs)
            assert got.dtype == expected.dtype
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_broadcast_tvm_cannot_match_is_a_clear_error(tmp_path):
    """``h[:1] + h``: Relax sees ``min(1, N)`` against ``N`` (and used to crash the process)."""
    if not available_backends(["tvm"])[0]:
        pytest.skip("TVM is not installed")
    from mixq_compile.runtimes.tvm.translator import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match=r"broadcast between run-time sizes.*backend='torch'"):
        mq.export(_AfterConv(lambda h: h[:1] + h).eval(), random_graph(20, 60, 8), tmp_path / "a", backend="tvm")
