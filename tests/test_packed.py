"""Packed sub-byte codes (issue 15): ``mixq::pack`` and the ops over packed tables give the integers of their
unpacked forms, on every kernel level this CPU runs and on the ATen path; the torch backend's packing pass keeps
programs exact and stores 2- and 4-bit input-layer weights packed."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixq_compile as mq
from mixq_compile.ir import instructions as K
from mixq_compile.lowering.code_ranges import code_range
from mixq_compile.lowering.csr_aggregation import csr_features, find_aggregations, sorted_structure
from mixq_compile.lowering.fold_relu import fold_relu
from mixq_compile.lowering.fuse_input_linear import fuse_input_linear
from mixq_compile.lowering.fuse_requantize import fuse_requantize
from mixq_compile.lowering.pack_codes import pack_narrow_codes
from mixq_compile.ops import input_linear, native
from mixq_compile.ops.packed import pack_reference, packed_stride, packing_bits, unpack
from mixq_compile.runtimes.torch.integer_ops import dispatching_ops

from helpers import WEIGHT_RANGES, adversarial_graphs, random_graph
from zoo import frozen_at_random_bits

pytestmark = pytest.mark.usefixtures("kernels")  # every test on every kernel level (conftest.py)

mixq = torch.ops.mixq
FIXTURE_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
#: every tile case: masked / generic tails, 8-channel AVX2 halves, 16-vector AVX-512 tiles, more than one tile
CHANNELS = [1, 7, 8, 15, 16, 17, 33, 64, 100, 129, 255, 256, 257, 300, 513]


def _codes(rows: int, channels: int, bits: int, signed: bool, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    qmin = -(2 ** (bits - 1)) if signed else 0
    return torch.randint(qmin, qmin + 2**bits, (rows, channels), dtype=torch.int8, generator=gen), qmin


def test_packing_bits_and_row_bytes():
    assert [packing_bits(lo, hi) for lo, hi in ((-2, 1), (0, 3), (-8, 7), (0, 15), (-8, 8), (-128, 127))] == [
        2, 2, 4, 4, None, None,
    ]  # fmt: skip
    assert packed_stride(128, 4) == 64 and packed_stride(128, 2) == 32 and packed_stride(7, 2) == 16
    assert packed_stride(257, 4) == 144  # whole 16-byte blocks of 32 channels


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rows=st.integers(0, 9), channels=st.sampled_from(CHANNELS), bits=st.sampled_from([2, 4]), signed=st.booleans())
def test_pack_round_trips_and_every_path_packs_alike(rows, channels, bits, signed):
    codes, qmin = _codes(rows, channels, bits, signed, torch.Generator().manual_seed(rows * channels))
    packed = mixq.pack(codes, qmin, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, packed_stride(channels, bits))
    assert torch.equal(packed, pack_reference(codes, qmin, bits))
    assert torch.equal(unpack(packed, qmin, bits, channels), codes)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    graph=adversarial_graphs(),
    bits=st.sampled_from([2, 4]),
    signed=st.booleans(),
    weighted=st.booleans(),
    per_channel_zero=st.booleans(),
    channels=st.sampled_from(CHANNELS),
    requantized=st.booleans(),
    weights=st.sampled_from(WEIGHT_RANGES),
    seed=st.integers(0, 99),
)
def test_packed_aggregation_equals_the_unpacked_one(
    graph, bits, signed, weighted, per_channel_zero, channels, requantized, weights, seed
):
    x, edge_index = graph
    gen = torch.Generator().manual_seed(seed)
    n, edges = x.shape[0], edge_index.shape[1]
    table, qmin = _codes(n, channels, bits, signed, gen)
    zero = torch.randint(qmin, qmin + 2**bits, (channels,) if per_channel_zero else (), generator=gen)
    order = torch.argsort(edge_index[1], stable=True)
    dst, src = edge_index[1][order], edge_index[0][order]
    weight = torch.randint(*weights, (edges,), dtype=torch.int32, generator=gen) if weighted else None
    packed = mixq.pack(table, qmin, bits)
    if requantized:
        multiplier, out_zero = torch.tensor(0.013), torch.tensor(-3, dtype=torch.int32)
        want = mixq.csr_sum_requantize(dst, src, weight, table, zero, n, multiplier, out_zero, -128, 127)
        got = mixq.csr_sum_packed_requantize(
            dst, src, weight, packed, zero, n, qmin, bits, channels, multiplier, out_zero, -128, 127
        )
    else:
        want = mixq.csr_sum(dst, src, weight, table, zero, n)
        got = mixq.csr_sum_packed(dst, src, weight, packed, zero, n, qmin, bits, channels)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("read", ["packed", "unpacked once"])  # small tables are read as int8 by default
@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    rows=st.integers(1, 30),
    features=st.sampled_from([1, 9, 64, 200]),
    out=st.sampled_from(CHANNELS),
    bits=st.sampled_from([2, 4]),
    signed=st.booleans(),
    density=st.sampled_from([0.0, 0.02, 1.0]),
    requantized=st.booleans(),
    seed=st.integers(0, 99),
)
def test_packed_input_layer_equals_the_unpacked_one(
    read, monkeypatch, rows, features, out, bits, signed, density, requantized, seed
):
    if read == "packed":
        monkeypatch.setattr(input_linear, "UNPACK_BELOW_BYTES", 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=gen) * (torch.rand(rows, features, generator=gen) < density)
    w_t, w_qmin = _codes(features, out, bits, signed, gen)
    w_sum = w_t.sum(0, dtype=torch.int32)
    bias = torch.randint(-999, 999, (out,), dtype=torch.int32, generator=gen)
    scale, zero = torch.tensor(0.05), torch.tensor(3.0)
    packed = pack_reference(w_t, w_qmin, bits)
    if requantized:
        tail = (torch.tensor(0.002), torch.tensor(1, dtype=torch.int32), -8, 7)
        want = mixq.quantize_linear_requantize(x, scale, zero, -128, 127, w_t, w_sum, bias, *tail)
        got = mixq.quantize_linear_packed_requantize(
            x, scale, zero, -128, 127, packed, w_qmin, bits, out, w_sum, bias, *tail
        )
    else:
        want = mixq.quantize_linear(x, scale, zero, -128, 127, w_t, w_sum, bias)
        got = mixq.quantize_linear_packed(x, scale, zero, -128, 127, packed, w_qmin, bits, out, w_sum, bias)
    assert torch.equal(got, want)


def test_small_packed_weight_tables_are_unpacked_once_and_large_ones_read_packed(monkeypatch):
    """The input layer reads a packed weight table that fits the caches as int8 codes, unpacked on the first call
    only (and again after the table changes); a larger one stays packed (:data:`input_linear.UNPACK_BELOW_BYTES`)."""
    unpacked = []
    monkeypatch.setattr(input_linear, "unpack", lambda *a: unpacked.append(a[0].shape) or unpack(*a))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 64, generator=gen) * (torch.rand(40, 64, generator=gen) < 0.01)
    assert input_linear.density(x) <= input_linear.SPARSE_DENSITY  # the sparse kernel's path where it is built
    w_t, w_qmin = _codes(64, 48, 2, True, gen)
    w_sum, scale, zero = w_t.sum(0, dtype=torch.int32), torch.tensor(0.05), torch.tensor(3.0)
    packed = pack_reference(w_t, w_qmin, 2)

    def layer():
        return mixq.quantize_linear_packed(x, scale, zero, -128, 127, packed, w_qmin, 2, 48, w_sum, None)

    want = mixq.quantize_linear(x, scale, zero, -128, 127, w_t, w_sum, None)
    assert all(torch.equal(layer(), want) for _ in range(3)) and unpacked == [packed.shape]
    read = int(x.ne(0).any(0).nonzero()[0])  # a weight row the layer reads
    packed[read, 0] ^= 1  # the table changed: unpacked again
    assert not torch.equal(layer(), want) and len(unpacked) == 2
    monkeypatch.setattr(input_linear, "UNPACK_BELOW_BYTES", 64 * 48 - 1)  # one byte short: read packed
    packed[read, 0] ^= 1
    assert torch.equal(layer(), want)
    expected_unpacks = 3 if native.library() is None else 2  # the ATen path unpacks for its GEMM
    assert len(unpacked) == expected_unpacks


def test_narrow_aggregation_packs_only_large_tables_of_long_rows_and_sums_alike(monkeypatch):
    """``mixq::csr_sum_narrow[_requantize]`` reads the int8 codes of small tables and of rows under a cache line,
    and packs the others: either way the integers of ``mixq::csr_sum``."""
    from mixq_compile.ops import packed as P

    n, channels, bits, qmin = 50, 80, 2, -2
    table = torch.randint(qmin, qmin + 4, (n, channels), dtype=torch.int8)
    src, dst = torch.randint(0, n, (300,)), torch.sort(torch.randint(0, n, (300,))).values
    zero, multiplier, out_zero = torch.tensor(1), torch.tensor(0.01), torch.tensor(3)
    want = mixq.csr_sum(dst, src, None, table, zero, n)
    packs = []
    original = P._csr_sum_packed
    monkeypatch.setattr(P, "_csr_sum_packed", lambda *a: packs.append(1) or original(*a))
    for from_bytes, from_row, packed in ((16 << 20, 64, False), (0, 64, True), (0, channels + 1, False)):
        monkeypatch.setattr(P, "PACK_FROM_BYTES", from_bytes)
        monkeypatch.setattr(P, "PACK_FROM_ROW_BYTES", from_row)
        packs.clear()
        assert P.packing_pays(table) == packed
        assert torch.equal(mixq.csr_sum_narrow(dst, src, None, table, zero, n, qmin, bits), want)
        assert len(packs) == packed
    monkeypatch.undo()
    got = mixq.csr_sum_narrow_requantize(dst, src, None, table, zero, n, qmin, bits, multiplier, out_zero, -8, 7)
    assert torch.equal(got, mixq.requantize(want, multiplier, out_zero, -8, 7))


def _torch_features(program, x, edge_index):
    """The torch backend's feature program before packing, and its inputs."""
    frontier = tuple(program.structure(x, edge_index))
    aggregations = find_aggregations(program.features, 2, frontier)
    features = csr_features(program.features, aggregations)
    features, _ = fuse_input_linear(features)
    features, _ = fuse_requantize(dispatching_ops(features, op_by_op=True))
    return features, sorted_structure(program.structure, aggregations)


@pytest.mark.parametrize("name", ["paper_gcn", "sage_sum", "gat", "graphconv", "pyg_basic_gin"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tables", ["packed", "as-needed"])
def test_packing_pass_keeps_zoo_programs_exact_at_random_bits(name, seed, tables, request):
    if tables == "packed":
        request.getfixturevalue("pack_every_table")
    frozen, (x, edge_index), _ = frozen_at_random_bits(name, seed)
    x = x * (torch.rand(x.shape) < 0.02)  # sparse features: the packed sparse input layer runs
    program = mq.lower(frozen)
    features, structure = _torch_features(program, x, edge_index)
    packed, count = pack_narrow_codes(features)
    narrow = sum(1 for b in frozen.chosen_bits().values() if b <= 4)
    assert count > 0 or narrow == 0
    for graph_x, graph_ei in ((x, edge_index), random_graph(x.shape[0] + 11, 4 * x.shape[0], x.shape[1], seed=9)):
        frontier = tuple(structure(graph_x, graph_ei))
        assert torch.equal(packed(graph_x, graph_ei, *frontier)[0], features(graph_x, graph_ei, *frontier)[0])


@pytest.mark.parametrize("name", ["paper_gcn", "sage_sum", "arxiv_gcn_bn", "pyg_basic_gin"])
def test_folding_relu_into_the_requantize_keeps_programs_exact(name):
    frozen, (x, edge_index), _ = frozen_at_random_bits(name, 3)
    features, structure = _torch_features(mq.lower(frozen), x, edge_index)
    folded, count = fold_relu(features)
    relus = sum(1 for n in features.graph.nodes if n.op == "call_function" and n.target is K.relu_codes)
    assert count <= relus and (name != "paper_gcn" or count == 1), "the GCN's hidden ReLU follows a requantize"
    for graph_x, graph_ei in ((x, edge_index), random_graph(x.shape[0] + 5, 3 * x.shape[0], x.shape[1], seed=4)):
        frontier = tuple(structure(graph_x, graph_ei))
        assert torch.equal(folded(graph_x, graph_ei, *frontier)[0], features(graph_x, graph_ei, *frontier)[0])


def test_code_ranges_come_from_the_clamping_producer():
    frozen, (x, edge_index), _ = frozen_at_random_bits("paper_gcn", 0)
    features, _ = _torch_features(mq.lower(mq.freeze(frozen, 2)), x, edge_index)
    aggregations = [n for n in features.graph.nodes if n.target is mixq.csr_sum_requantize.default]
    assert aggregations and all(code_range(n.args[3]) == (-2, 1) for n in aggregations)
    assert code_range(next(n for n in features.graph.nodes if n.op == "placeholder")) is None
