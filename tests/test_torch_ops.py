"""The torch backend's custom ops: ``mixq::csr_sum`` (exact integer sums on every kind of graph, and the CSR
rewrite of feature programs), ``mixq::quantize`` / ``mixq::requantize`` (the same codes as the instructions) and
``mixq::quantize_linear`` (quantize + first GEMM, skipping zero features; the fusion pass keeps programs exact).
Every test runs on every implementation this CPU can run: the native C kernels built for each kernel level up to
the CPU's own (``MIXQ_ISA``: portable, AVX2, AVX-512, VNNI) and the ATen code used without a C compiler."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixq_compile.errors import InputValueError
from mixq_compile.ir import instructions as K
from mixq_compile.lowering.csr_aggregation import csr_features, find_aggregations, sorted_structure
from mixq_compile.lowering.fuse_input_linear import fuse_input_linear
from mixq_compile.ops import csr, elementwise, native  # noqa: F401
from mixq_compile.ops.input_linear import density

from helpers import WEIGHT_RANGES, adversarial_graphs
from zoo import lowered

csr_sum = torch.ops.mixq.csr_sum


pytestmark = pytest.mark.usefixtures("kernels")  # every test on every kernel level (conftest.py)


def _reference(dst, src, weight, table, zero, rows):
    """The integer program's chain: gather, center, multiply, scatter-add (in int64, so nothing overflows)."""
    msg = table[src].long() - (0 if zero is None else zero.long())
    if weight is not None:
        msg = msg * weight.long()[:, None]
    return torch.zeros(rows, table.shape[1], dtype=torch.long).index_add(0, dst, msg)


def _sorted(edge_index):
    order = torch.argsort(edge_index[1], stable=True)
    return edge_index[1][order], edge_index[0][order]


FIXTURE_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
#: output widths that reach every register-tile case of the kernels: 1..8 vectors of 16 (AVX-512) or 8 (AVX2)
#: lanes, masked or generic tails, more than one 128-wide tile.
CHANNELS = [1, 7, 8, 12, 17, 64, 100, 129, 300]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    graph=adversarial_graphs(),
    weighted=st.booleans(),
    per_channel_zero=st.booleans(),
    channels=st.sampled_from(CHANNELS),
    weights=st.sampled_from(WEIGHT_RANGES),
    seed=st.integers(0, 99),
)
def test_int8_codes_sum_exactly_on_adversarial_graphs(graph, weighted, per_channel_zero, channels, weights, seed):
    x, edge_index = graph
    gen = torch.Generator().manual_seed(seed)
    n, edges = x.shape[0], edge_index.shape[1]
    table = torch.randint(-128, 128, (n, channels), dtype=torch.int8, generator=gen)
    zero = torch.randint(-128, 128, (channels,) if per_channel_zero else (), generator=gen)
    weight = torch.randint(*weights, (edges,), dtype=torch.int32, generator=gen) if weighted else None
    dst, src = _sorted(edge_index)
    if weight is not None:
        weight = weight[torch.argsort(edge_index[1], stable=True)]
    got = csr_sum(dst, src, weight, table, zero, n)
    assert got.dtype == torch.int32 and got.shape == (n, channels)
    assert torch.equal(got, _reference(dst, src, weight, table, zero, n).to(torch.int32))  # modulo 2**32


def test_sums_beyond_float32_precision_switch_to_float64_and_stay_exact():
    # int16 codes near 2**15 times weights near 1000 over a hub of degree 60: partial sums reach ~2**31 > 2**24.
    n = 61
    dst = torch.zeros(60, dtype=torch.long)
    src = torch.arange(1, 61)
    table = torch.full((n, 4), 32000, dtype=torch.int16) - torch.arange(n, dtype=torch.int16)[:, None]
    weight = torch.full((60,), 1000, dtype=torch.int32) + torch.arange(60, dtype=torch.int32)
    got = csr_sum(dst, src, weight, table, None, n)
    expected = _reference(dst, src, weight, table, None, n)
    assert expected.abs().max() > 2**24
    assert torch.equal(got.long(), expected)


def test_float_tables_sum_in_their_dtype():
    x, edge_index = torch.randn(30, 5), torch.randint(0, 30, (2, 90))
    dst, src = _sorted(edge_index)
    weight = torch.rand(90)
    got = csr_sum(dst, src, weight, x, None, 30)
    expected = torch.zeros(30, 5).index_add(0, dst, x[src] * weight[:, None])
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE_OK)
@given(graph=adversarial_graphs(), name=st.sampled_from(["paper_gcn", "sage_sum"]))
def test_csr_rewritten_program_equals_the_integer_program(graph, name):
    _, program = lowered(name)
    frontier = tuple(program.structure(*graph))
    aggregations = find_aggregations(program.features, len(graph), frontier)
    assert len(aggregations) == 2, "both layers' aggregations are found"
    structure, features = (
        sorted_structure(program.structure, aggregations),
        csr_features(program.features, aggregations),
    )
    targets = {n.target for n in features.graph.nodes if n.op == "call_function"}
    assert csr_sum.default in targets and not {t for t in targets if "scatter" in getattr(t, "__name__", str(t))}
    assert torch.equal(features(*graph, *structure(*graph))[0], program(*graph))


@pytest.mark.parametrize("rows", [0, 5])
def test_graphs_without_edges_give_zero_rows(rows):
    empty = torch.zeros(0, dtype=torch.long)
    got = csr_sum(empty, empty, None, torch.ones(rows, 3, dtype=torch.int8), None, rows)
    assert got.shape == (rows, 3) and not got.any()


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    shape=st.sampled_from([(0, 5), (1, 1), (7, 3), (300, 1433), (2, 3, 4000), (5,)]),
    per_channel=st.booleans(),
    bits=st.sampled_from([(-128, 127), (0, 3), (-8, 7), (-32768, 32767)]),
    seed=st.integers(0, 99),
)
def test_blocked_quantize_gives_the_instruction_s_codes_bit_for_bit(shape, per_channel, bits, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 10
    x.view(-1)[::7] = 0.5  # exact ties: rounding must agree (half to even) there too
    channels = shape[-1]
    scale = torch.rand(channels if per_channel else (), generator=gen) + 0.01
    zero = torch.randint(bits[0], bits[1] + 1, (channels,) if per_channel else (), generator=gen).float()
    if per_channel and len(shape) == 1:
        scale, zero = scale[:1], zero[:1]
    expected = K.quantize(x, scale, zero, *bits)
    got = torch.ops.mixq.quantize(x, scale, zero, *bits)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    if per_channel:
        scale.fill_(0.5), zero.fill_(0)
    assert torch.equal(torch.ops.mixq.quantize(x, scale, zero, *bits), K.quantize(x, scale, zero, *bits))


def test_quantize_rounds_exact_ties_half_to_even():
    x = (torch.arange(-300, 300).float() + 0.5) * 0.25  # x / 0.25 lands exactly on .5 for every element
    scale, zero = torch.tensor(0.25), torch.tensor(0.0)
    assert torch.equal(torch.ops.mixq.quantize(x, scale, zero, -128, 127), K.quantize(x, scale, zero, -128, 127))


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    shape=st.sampled_from([(0, 5), (1, 1), (7, 3), (300, 129), (2, 3, 40), (5,)]),
    per_channel=st.booleans(),
    bits=st.sampled_from([(-128, 127), (0, 3), (-8, 7), (-32768, 32767)]),
    seed=st.integers(0, 99),
)
def test_requantize_gives_the_instruction_s_codes_bit_for_bit(shape, per_channel, bits, seed):
    gen = torch.Generator().manual_seed(seed)
    acc = torch.randint(-(2**31), 2**31 - 1, shape, generator=gen, dtype=torch.int32)
    acc.view(-1)[::3] >>= 12  # small accumulators too, so the codes are not all clamped
    acc.view(-1)[1::5] = 2**24 + 1  # beyond float32's integers: int32 -> float32 must round as the instruction does
    channels = shape[-1]
    multiplier = torch.rand(channels if per_channel else (), generator=gen) * 1e-3
    zero = torch.randint(bits[0], bits[1] + 1, (channels,) if per_channel else (), generator=gen, dtype=torch.int32)
    if per_channel and len(shape) == 1:
        multiplier, zero = multiplier[:1], zero[:1]
    expected = K.requantize(acc, multiplier, zero, *bits)
    got = torch.ops.mixq.requantize(acc, multiplier, zero, *bits)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    ties = torch.arange(-300, 300, dtype=torch.int32).reshape(-1, 1).expand(-1, channels).contiguous()
    half = torch.full_like(multiplier, 0.5)  # acc * 0.5 lands exactly on .5 for every odd acc: half to even
    assert torch.equal(torch.ops.mixq.requantize(ties, half, zero, *bits), K.requantize(ties, half, zero, *bits))


@pytest.mark.parametrize(
    ("dst", "src", "message"),
    [
        ([1, 0, 2], [0, 1, 2], "sorted ascending"),
        ([0, 1, 3], [0, 1, 2], "sorted ascending"),
        ([0, 5, 1], [0, 1, 2], "sorted ascending"),  # out of range inside, the ends in range
        ([0, -1, 2], [0, 1, 2], "sorted ascending"),
        ([0] * 600 + [2, 1] + [2] * 600, [0] * 1202, "sorted ascending"),  # in the second thread's half
        ([0, 1, 2], [0, 1, 9], "src"),
        ([0, 1, 2], [0, -1, 2], "src"),
        ([0] * 1000, [0] * 999 + [3], "src"),
    ],
)
def test_native_kernel_rejects_unsorted_or_out_of_range_edges(kernels, dst, src, message):
    if kernels != "native":
        pytest.skip("the bounds checks are the native kernel's (the ATen path trusts the structure program)")
    table = torch.ones(3, 2, dtype=torch.int8)
    with pytest.raises(ValueError, match=message):
        csr_sum(torch.tensor(dst), torch.tensor(src), None, table, None, 3)


def test_checked_row_pointers_are_reused_until_the_edges_change(kernels, monkeypatch):
    """The native kernels index with row pointers checked once per graph (``native.csr_rows``): a second call on
    the same edge tensors skips the checks, and an in-place change of either tensor, a new ``src`` or another row
    count is checked again (and rejected when out of range)."""
    if kernels != "native":
        pytest.skip("the row pointers are the native kernels'")
    checks = []
    lib = native.library()

    class Counting:
        def __getattr__(self, name):
            return getattr(lib, name)

        def csr_structure(self, *args):
            checks.append(args)
            return lib.csr_structure(*args)

    monkeypatch.setattr(native, "library", lambda: Counting())
    table = torch.arange(8, dtype=torch.int8).reshape(4, 2)
    dst, src = torch.tensor([0, 0, 1, 3]), torch.tensor([1, 2, 3, 0])
    expected = csr_sum(dst, src, None, table, None, 4)
    assert torch.equal(csr_sum(dst, src, None, table, None, 4), expected) and len(checks) == 1
    csr_sum(dst, src.clone(), None, table, None, 4)  # same values, another tensor: checked
    csr_sum(dst, src, None, table, None, 5)  # another row count
    assert len(checks) == 3
    src[2] = 4  # past the table, in place
    with pytest.raises(ValueError, match="src"):
        csr_sum(dst, src, None, table, None, 4)
    src[2] = 3
    dst[1] = 2  # unsorted, in place
    with pytest.raises(ValueError, match="sorted ascending"):
        csr_sum(dst, src, None, table, None, 4)
    with pytest.raises(ValueError, match="3 edge targets"):
        csr_sum(dst[:3], src, None, table, None, 4)
    with pytest.raises(ValueError, match="3 edge weights for 4 edges"):
        csr_sum(torch.tensor([0, 0, 1, 3]), src, torch.ones(3, dtype=torch.int32), table, None, 4)
    dst = torch.tensor([0, 0, 1, 3])
    csr_sum(dst, src, None, table, None, 4)
    saved = io.BytesIO()
    torch.save(dst, saved)  # the tensor that holds checked row pointers still pickles
    assert torch.equal(torch.load(io.BytesIO(saved.getvalue())), dst)


@pytest.mark.parametrize(
    "dst",
    [[2, 2, 4], [0, 0, 1], [5], [], [1, 3, 3, 3, 5], list(range(6))],  # rows without edges first, between, last
)
def test_rows_without_edges_sum_to_nothing(kernels, dst):
    table = torch.arange(-6, 6, dtype=torch.int8).reshape(6, 2)
    src = torch.tensor([(3 * i + 1) % 6 for i in range(len(dst))], dtype=torch.int64)
    dst = torch.tensor(dst, dtype=torch.int64)
    expected = torch.zeros(6, 2, dtype=torch.int32).index_add_(0, dst, table[src].to(torch.int32))
    assert torch.equal(csr_sum(dst, src, None, table, None, 6), expected)


def _dense_reference(x, scale, zero, bits, w_t, bias):
    w_sum = w_t.to(torch.int32).sum(0, dtype=torch.int32)
    return K.linear_int(K.quantize(x, scale, zero, *bits), zero, w_t, w_sum, bias), w_sum


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    shape=st.sampled_from([(1, 1), (7, 16), (33, 40), (200, 300), (2, 5, 17), (0, 9)]),
    density=st.sampled_from([0.0, 0.01, 0.2, 1.0]),
    bits=st.sampled_from([(-128, 127), (-2, 1), (0, 3), (-32768, 32767)]),
    weight=st.sampled_from([torch.int8, torch.int16]),
    biased=st.booleans(),
    out=st.sampled_from(CHANNELS),
    seed=st.integers(0, 99),
)
def test_quantize_linear_equals_quantize_then_linear_int(shape, density, bits, weight, biased, out, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < density)
    x.view(-1)[::5] *= 0.0 if density < 1 else 1.0  # exact zeros (and -0.0) among the features
    scale = torch.rand((), generator=gen) * 0.1 + 0.01
    zero = torch.randint(bits[0], bits[1] + 1, (), generator=gen).float()
    info = torch.iinfo(weight)
    w_t = torch.randint(max(info.min, -1000), min(info.max, 1000), (shape[-1], out), dtype=weight, generator=gen)
    bias = torch.randint(-(2**20), 2**20, (out,), dtype=torch.int32, generator=gen) if biased else None
    expected, w_sum = _dense_reference(x, scale, zero, bits, w_t, bias)
    got = torch.ops.mixq.quantize_linear(x, scale, zero, *bits, w_t, w_sum, bias)
    assert got.dtype == torch.int32 and torch.equal(got, expected)
    if native.supports_quantize_linear(x, scale, zero, w_t):  # the native kernel is exact at every density
        assert torch.equal(native.quantize_linear(x, scale, zero, *bits, w_t, bias), expected)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    graph=adversarial_graphs(),
    channels=st.sampled_from(CHANNELS),
    per_channel=st.booleans(),
    bits=st.sampled_from([(-128, 127), (0, 3), (-32768, 32767)]),
    density=st.sampled_from([0.0, 0.02, 1.0]),
    seed=st.integers(0, 99),
)
def test_requantize_epilogues_equal_requantize_after_the_op(graph, channels, per_channel, bits, density, seed):
    """``csr_sum_requantize`` / ``quantize_linear_requantize`` against ``requantize`` of the plain op, bit for bit
    (int16 codes take the unfused path; per-channel and per-tensor grids; exact ties)."""
    x, edge_index = graph
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    shape = (channels,) if per_channel else ()
    multiplier = torch.rand(shape, generator=gen) * 1e-3
    multiplier.view(-1)[:1] = 0.5  # ties: odd sums land on .5
    out_zero = torch.randint(bits[0], bits[1] + 1, shape, generator=gen, dtype=torch.int32)
    table = torch.randint(-128, 128, (n, channels), dtype=torch.int8, generator=gen)
    zero = torch.randint(-128, 128, (), generator=gen)
    dst, src = _sorted(edge_index)
    weight = torch.randint(-255, 256, (edge_index.shape[1],), dtype=torch.int32, generator=gen)
    plain = torch.ops.mixq.requantize(csr_sum(dst, src, weight, table, zero, n), multiplier, out_zero, *bits)
    fused = torch.ops.mixq.csr_sum_requantize(dst, src, weight, table, zero, n, multiplier, out_zero, *bits)
    assert fused.dtype == plain.dtype and torch.equal(fused, plain)
    features = torch.randn(n, 50, generator=gen) * (torch.rand(n, 50, generator=gen) < density)
    w_t = torch.randint(-128, 128, (50, channels), dtype=torch.int8, generator=gen)
    args = (features, torch.tensor(0.05), torch.tensor(-128.0), -128, 127, w_t, w_t.sum(0, dtype=torch.int32), None)
    plain = torch.ops.mixq.requantize(torch.ops.mixq.quantize_linear(*args), multiplier, out_zero, *bits)
    fused = torch.ops.mixq.quantize_linear_requantize(*args, multiplier, out_zero, *bits)
    assert fused.dtype == plain.dtype and torch.equal(fused, plain)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("density", [0.01, 1.0])
def test_quantize_linear_refuses_non_finite_features_on_every_path(kernels, bad, density):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(70, 300, generator=gen) * (torch.rand(70, 300, generator=gen) < density)
    x[69, 299] = bad  # the last element: the scalar tail of the scan
    w_t = torch.randint(-128, 128, (300, 20), dtype=torch.int8, generator=gen)
    args = (torch.tensor(0.05), torch.tensor(3.0), -128, 127, w_t, w_t.sum(0, dtype=torch.int32), None)
    with pytest.raises(InputValueError, match=r"NaN or infinite.*nan_to_num"):
        torch.ops.mixq.quantize_linear(x, *args)
    x[69, 299] = 0.0
    x[3, 17] = bad  # inside a vector block
    with pytest.raises(InputValueError, match=r"NaN or infinite.*nan_to_num"):
        torch.ops.mixq.quantize_linear(x, *args)
    assert torch.ops.mixq.quantize(x, *args[:4]).shape == x.shape  # the quantize op alone passes NaN/Inf on


def test_quantize_linear_takes_the_sparse_kernel_only_for_sparse_features(kernels, monkeypatch):
    calls = []
    monkeypatch.setattr(
        native, "quantize_linear", lambda *args: calls.append(1) or torch.zeros(4, 3, dtype=torch.int32)
    )
    w_t, zero = torch.ones(10, 3, dtype=torch.int8), torch.tensor(0.0)
    sparse, dense = torch.zeros(4, 10), torch.ones(4, 10)
    torch.ops.mixq.quantize_linear(
        sparse, torch.tensor(0.1), zero, -128, 127, w_t, w_t.int().sum(0, dtype=torch.int32), None
    )
    torch.ops.mixq.quantize_linear(
        dense, torch.tensor(0.1), zero, -128, 127, w_t, w_t.int().sum(0, dtype=torch.int32), None
    )
    assert calls == ([1] if kernels == "native" else [])


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE_OK)
@given(graph=adversarial_graphs(), density=st.sampled_from([0.02, 1.0]))
def test_input_linear_fusion_keeps_the_program_exact(graph, density):
    _, program = lowered("paper_gcn")
    x, edge_index = graph
    x = x * (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < density)
    fused, count = fuse_input_linear(program.features)
    assert count == 1, "the input layer's quantize -> linear_int pair"
    targets = [n.target for n in fused.graph.nodes if n.op == "call_function"]
    assert torch.ops.mixq.quantize_linear.default in targets and K.quantize not in targets
    frontier = program.structure(x, edge_index)
    assert torch.equal(fused(x, edge_index, *frontier)[0], program(x, edge_index))


def test_input_codes_read_by_more_than_the_linear_are_not_fused():
    _, program = lowered("sage_sum")  # SAGE's input codes feed the aggregation and the root linear
    _, count = fuse_input_linear(program.features)
    assert count == 0


@settings(max_examples=20, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    rows=st.integers(0, 40),
    block=st.sampled_from([1, 3, 16, 2048]),  # rows per block
    out=st.sampled_from([1, 7, 64, 129]),
    per_channel=st.booleans(),
    bits=st.sampled_from([(-128, 127), (-8, 7), (0, 255), (-2048, 2047)]),
    biased=st.booleans(),
    seed=st.integers(0, 99),
)
def test_linear_requantize_in_row_blocks_equals_requantize_after_linear_int(
    rows, block, out, per_channel, bits, biased, seed
):
    from mixq_compile.ops import linear

    gen = torch.Generator().manual_seed(seed)
    q_x = torch.randint(-128, 128, (rows, 33), dtype=torch.int8, generator=gen)
    w_t = torch.randint(-128, 128, (33, out), dtype=torch.int8, generator=gen)
    x_zero = torch.randint(-128, 128, (), generator=gen)
    bias = torch.randint(-9999, 9999, (out,), dtype=torch.int32, generator=gen) if biased else None
    shape = (out,) if per_channel else ()
    multiplier = torch.rand(shape, generator=gen) * 1e-3
    out_zero = torch.randint(bits[0], bits[1] + 1, shape, generator=gen, dtype=torch.int32)
    args = (q_x, x_zero, w_t, w_t.sum(0, dtype=torch.int32), bias)
    want = torch.ops.mixq.requantize(torch.ops.mixq.linear_int(*args), multiplier, out_zero, *bits)
    original = linear.BLOCK_BYTES
    linear.BLOCK_BYTES = block * 4 * out
    try:
        got = torch.ops.mixq.linear_int_requantize(*args, multiplier, out_zero, *bits)
    finally:
        linear.BLOCK_BYTES = original
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (17, 3), (100, 7), (2708, 33), (4, 2, 9)])
def test_the_sampled_feature_density_counts_as_torch_does(kernels, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[x.abs() < 0.7] = 0
    if x.numel():
        x.view(-1)[0] = float("nan")  # counted: not zero
    rows = x.reshape(-1, shape[-1])
    sample = rows[:: max(1, rows.shape[0] // 16)]
    expected = float(torch.count_nonzero(sample)) / sample.numel() if sample.numel() else 0.0
    assert density(x) == pytest.approx(expected, abs=1e-12)
    assert density(x.transpose(0, -1)) == pytest.approx(density(x.transpose(0, -1).contiguous()), abs=1e-12)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("weights", WEIGHT_RANGES)
def test_dequantize_epilogues_equal_dequantize_after_the_op(kernels, pack_every_table, per_channel, weights):
    """``csr_sum_dequantize`` (int8 and narrow, read packed), ``linear_int_dequantize`` (in row blocks and on the
    GEMM's own epilogue) against ``dequantize_acc`` of the plain op, bit for bit: sums past 2**24 round to float32
    as the instruction's conversion does, and a float64 scale keeps the instruction's promotion."""
    from mixq_compile.ops import linear

    gen = torch.Generator().manual_seed(0)
    n, channels, edges = 70, 37, 900
    dst = torch.sort(torch.randint(0, n, (edges,), generator=gen)).values
    src = torch.randint(0, n, (edges,), generator=gen)
    weight = torch.randint(*weights, (edges,), dtype=torch.int32, generator=gen)
    scale = torch.rand((channels,) if per_channel else (), generator=gen) * 1e-3 + 1e-6
    table = torch.randint(-128, 128, (n, channels), dtype=torch.int8, generator=gen)
    zero = torch.tensor(-5)
    want = K.dequantize_acc(csr_sum(dst, src, weight, table, zero, n), scale)
    got = torch.ops.mixq.csr_sum_dequantize(dst, src, weight, table, zero, n, scale)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    narrow = torch.randint(-2, 2, (n, channels), dtype=torch.int8, generator=gen)
    want = K.dequantize_acc(csr_sum(dst, src, weight, narrow, zero, n), scale)
    assert torch.equal(torch.ops.mixq.csr_sum_narrow_dequantize(dst, src, weight, narrow, zero, n, -2, 2, scale), want)
    wide = scale.double()
    got = torch.ops.mixq.csr_sum_dequantize(dst, src, weight, table, zero, n, wide)
    want = K.dequantize_acc(csr_sum(dst, src, weight, table, zero, n), wide)
    assert got.dtype == want.dtype and torch.equal(got, want)

    q_x = torch.randint(-128, 128, (300, 140), dtype=torch.int8, generator=gen)
    w_t = torch.randint(-128, 128, (140, channels), dtype=torch.int8, generator=gen)
    bias = torch.randint(-(2**30), 2**30, (channels,), dtype=torch.int32, generator=gen)
    args = (q_x, torch.tensor(7), w_t, w_t.sum(0, dtype=torch.int32), bias)
    want = K.dequantize_acc(torch.ops.mixq.linear_int(*args), scale)
    assert torch.equal(torch.ops.mixq.linear_int_dequantize(*args, scale), want)
    original = linear.BLOCK_BYTES
    linear.BLOCK_BYTES = 64 * 4 * channels  # row blocks of 64 on the paths that block in Python
    try:
        assert torch.equal(torch.ops.mixq.linear_int_dequantize(*args, scale), want)
    finally:
        linear.BLOCK_BYTES = original
