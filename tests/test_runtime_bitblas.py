"""The bitblas backend without a GPU: mapping, bitBLAS weight packing, the glue's emulation, export and load errors.

Nothing here imports bitblas (its TVM fork conflicts with apache-tvm and its import needs CUDA). The packed layout
was checked against bitblas 0.1.0.post1's own ``general_compress`` in a separate environment; the worker's ``build``
repeats that check against ``Matmul.transform_weight`` on every GPU build.
"""

from __future__ import annotations

import io
import json
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

import mixq_compile as mq
from mixq_compile.ir import instructions as K
from mixq_compile.models import PlanetoidGCN
from mixq_compile.runtimes import BackendUnavailableError
from mixq_compile.runtimes.bitblas.backend import (
    PLAN_FILE,
    bitblas_reason,
    build_glue,
    cuda_reason,
    plan_matmuls,
    read_message,
    write_message,
)
from mixq_compile.runtimes.bitblas.layout import MatmulPlan, bitblas_linear, pack_weight, unpack_weight
from mixq_compile.runtimes.bitblas.worker import serve
from mixq_compile.runtimes.pt2 import load_pt2

from helpers import random_graph

IN, HIDDEN, OUT = 9, 16, 3  # odd K for the first layer: its packed rows need padding


@pytest.fixture(scope="module")
def graph():
    return random_graph(30, 90, IN)


@pytest.fixture(scope="module")
def qmodel(graph):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(PlanetoidGCN(IN, OUT, hidden=HIDDEN), graph)
    q(*graph)  # calibrate
    return q


def _frozen(qmodel, bits1: int, bits2: int):
    return mq.freeze(qmodel, bits={"conv1.lin.weight": bits1, "conv2.lin.weight": bits2})


@pytest.mark.parametrize(("bits1", "bits2", "w1", "w2"), [(2, 4, "int2", "int4"), (8, 3, "int8", "int4")])
def test_one_plan_per_quantized_linear_with_shapes_and_weight_type(qmodel, graph, bits1, bits2, w1, w2):
    plans = plan_matmuls(mq.lower(_frozen(qmodel, bits1, bits2)), graph)
    assert [type(p) for p in plans] == [MatmulPlan, MatmulPlan]
    first, second = plans
    assert (first.site, first.weight_bits, first.W_dtype) == ("conv1.lin.weight", bits1, w1)
    assert (second.site, second.weight_bits, second.W_dtype) == ("conv2.lin.weight", bits2, w2)
    assert (first.N, first.in_features, second.N, second.K) == (HIDDEN, IN, OUT, HIDDEN)
    assert first.K == {"int2": 12, "int8": 9}[w1]  # K padded to whole bytes
    config = first.matmul_config()
    assert config["A_dtype"] == "int8" and config["accum_dtype"] == config["out_dtype"] == "int32"
    assert config["layout"] == "nt" and not config["with_zeros"] and not config["with_bias"]
    assert 1 in config["M"] and max(config["M"]) >= 30  # dynamic M covers the example's node count
    assert MatmulPlan.from_dict(json.loads(json.dumps(first.to_dict()))) == first


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("k", [1, 7, 16, 33])
def test_pack_unpack_round_trip_is_exact(width, k):
    low, high = -(2 ** (width - 1)), 2 ** (width - 1)
    w_t = torch.randint(low, high, (k, 5), dtype=torch.int8)
    packed = pack_weight(w_t, width)
    assert packed.dtype == torch.int8 and packed.shape == (5, -(-k * width // 8))
    assert torch.equal(unpack_weight(packed, width, k), w_t)


def test_packed_bytes_follow_bitblas_offset_binary_low_bits_first():
    # int4 codes 1, -2 -> stored 9, 6 -> byte 0x69; int2 codes -2..1 -> stored 0..3 -> 0b11100100
    assert pack_weight(torch.tensor([[1], [-2]], dtype=torch.int8), 4).view(torch.uint8).item() == 0x69
    assert pack_weight(torch.tensor([[-2], [-1], [0], [1]], dtype=torch.int8), 2).view(torch.uint8).item() == 0xE4
    with pytest.raises(ValueError, match="do not fit int2"):
        pack_weight(torch.tensor([[2]], dtype=torch.int8), 2)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_planned_matmul_from_packed_weights_equals_linear_int(width):
    k, n = 13, 6
    low, high = -(2 ** (width - 1)), 2 ** (width - 1)
    w_t = torch.randint(low, high, (k, n), dtype=torch.int8)
    q_x = torch.randint(-128, 128, (2, 11, k), dtype=torch.int8)
    x_zero, bias = torch.tensor(-7, dtype=torch.int32), torch.randint(-999, 999, (n,), dtype=torch.int32)
    w_sum = w_t.to(torch.int32).sum(0)
    expected = K.linear_int(q_x, x_zero, w_t, w_sum, bias)
    assert torch.equal(bitblas_linear(q_x, x_zero, pack_weight(w_t, width), w_sum, bias, width, k), expected)


def test_glue_on_packed_weights_equals_the_reference_executor(qmodel):
    program = mq.lower(_frozen(qmodel, 2, 4))
    glue, _, packed = build_glue(program, random_graph(30, 90, IN))
    x, edge_index = random_graph(47, 160, IN, seed=5)  # another graph: dynamic M
    frontier = program.structure(x, edge_index)
    expected = program.features(x, edge_index, *frontier)
    assert torch.equal(glue(x, edge_index, *frontier, *packed.values())[0], expected[0])


@pytest.fixture(scope="module")
def artifact(qmodel, graph, tmp_path_factory):
    return mq.export(_frozen(qmodel, 2, 4), graph, tmp_path_factory.mktemp("bb") / "gcn", backend="bitblas")


def test_export_writes_plan_packed_weights_and_glue(artifact, qmodel, graph):
    manifest = json.loads((artifact / "manifest.json").read_text())
    entries = manifest["backend_entries"]
    assert manifest["backend"] == "bitblas" and entries["plan"] == PLAN_FILE
    assert json.loads((artifact / PLAN_FILE).read_text())["matmuls"] == entries["matmuls"]
    assert [m["W_dtype"] for m in entries["matmuls"]] == ["int2", "int4"]
    weights = load_file(str(artifact / entries["weights"]))
    assert [tuple(weights[m["packed"]].shape) for m in entries["matmuls"]] == [(HIDDEN, 3), (OUT, 8)]
    program = mq.lower(_frozen(qmodel, 2, 4))
    structure, glue = load_pt2(artifact / entries["structure"]), load_pt2(artifact / entries["glue"])
    packed = [weights[name] for name in entries["packed_inputs"]]
    outputs = glue(*graph, *structure(*graph), *packed)
    assert torch.equal(outputs[0], program(*graph))


def test_load_without_gpu_raises_with_the_reason(artifact):
    reason = cuda_reason()
    if reason is None:
        pytest.skip("a CUDA device is present")
    assert "no CUDA" in reason and "sm_80" in reason
    with pytest.raises(BackendUnavailableError, match="no CUDA"):
        mq.load_artifact(artifact)


def test_missing_bitblas_is_named_with_the_environment():
    reason = bitblas_reason(sys.executable)
    if reason is None:
        pytest.skip("bitblas is installed in this environment")
    assert f"bitblas is not installed in {sys.executable}" in reason and "MIXQ_BITBLAS_PYTHON" in reason


def test_worker_serves_the_glue_over_its_protocol(artifact, graph, qmodel):
    """The worker's serve loop, in this process with the CPU emulation standing in for the kernels (a real worker
    process costs ~7 s of imports; ``WorkerRunner(..., emulate=True)`` runs the same loop in a subprocess)."""
    structure = load_pt2(artifact / "structure.pt2")
    requests = io.BytesIO()
    write_message(requests, (*graph, *structure(*graph)))
    write_message(requests, (graph[0],))
    requests.seek(0)
    replies = io.BytesIO()
    serve(artifact, True, requests, replies)
    replies.seek(0)
    outputs, error = read_message(replies), read_message(replies)
    assert torch.equal(outputs[0], mq.lower(_frozen(qmodel, 2, 4))(*graph))
    assert isinstance(error, str) and "inputs" in error
