"""The ``tvm`` backend: exported artifacts (GCN, SAGE, GIN) match the integer reference executor on two graph sizes
(dynamic N/E/number of graphs), FP32 artifacts match the FP32 model, and failures name the op or the missing
package."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv

import mixq_compile as mq
from mixq_compile.models import SAGE, TUGIN, PlanetoidGCN
from mixq_compile.runtimes import BackendUnavailableError, get_backend

from helpers import GraphNormGIN, output_step, random_batch, random_graph

pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install 'mixq_compile[tvm]'")

from mixq_compile.runtimes.tvm.translator import UnsupportedOpError

pytestmark = pytest.mark.slow  # every test builds a TVM module

FEATURES = 16
#: the LLVM CPUs kernels are built for in kernel tests: the AVX2, AVX-512 and portable x86-64 levels of
#: ``backend.LEVEL_MCPU`` (AVX-512 ones skip on CPUs without it)
MCPUS = ["haswell", "skylake-avx512", "x86-64"]


def _built(kernel, mcpu: str):
    """A hand-written kernel compiled alone for ``mcpu`` (skipped where this CPU cannot run its instructions)."""
    import tvm

    if mcpu == "skylake-avx512" and not mq.cpu.at_least("avx512"):
        pytest.skip(f"this CPU ({mq.cpu.model()}) cannot run AVX-512 code")
    return tvm.compile(
        tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target={"kind": "llvm", "mcpu": mcpu}
    )


def _csr_graph(rng, nodes: int, rows: int):
    """(dst, col, rowptr) of target-sorted edges: row 7 a hub, row 3 and the last row without edges."""
    import numpy as np

    dst = np.sort(np.concatenate([rng.integers(0, rows, 300), np.full(120, 7)]))
    dst = dst[(dst != 3) & (dst != rows - 1)]
    col = rng.integers(0, nodes, dst.size)
    return dst, col, np.searchsorted(dst, np.arange(rows + 1)).astype(np.int64)


def _row_sums(dst, col, table, zero, weight, rows: int):
    """``out[i] = Σ_{e: dst[e] = i} weight[e] * (table[col[e]] - zero)`` in the table's dtype (no weight: 1)."""
    import numpy as np

    terms = table[col] - zero
    if weight is not None:
        terms = terms * weight[:, None]
    out = np.zeros((rows, table.shape[1]), terms.dtype)
    np.add.at(out, dst, terms)
    return out


@pytest.fixture(scope="module")
def graphs():
    """The export example and a second graph of another size (the artifact's N and E are dynamic)."""
    return random_graph(100, 400, FEATURES), random_graph(257, 1333, FEATURES, seed=1)


def _frozen(model: nn.Module, example: tuple, bits: dict[str, int] | None = None) -> mq.QuantizedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model.eval(), example)
    qmodel(*example)  # calibrate
    return mq.freeze(qmodel, bits=bits)


def _check_integer(frozen: mq.QuantizedModel, graphs, tmp_path) -> mq.Artifact:
    program = mq.lower(frozen)
    lsb = output_step(program)
    artifact = mq.load_artifact(mq.export(frozen, graphs[0], tmp_path / "a", backend="tvm"))
    for inputs in graphs:
        error = (artifact(*inputs) - program(*inputs)).abs().max().item()
        assert error <= lsb * 1.001, f"{error} > 1 LSB ({lsb}) on N={inputs[0].shape[0]}"
    return artifact


GCN_BITS = [
    None,  # every site at 8 bits
    {
        "conv1.lin.weight": 2,
        "conv2.lin.weight": 4,
        "conv1.edge_weight": 4,
        "conv2.edge_weight": 4,
        "conv1.lin.input": 4,
        "conv1.aggregate": 4,
        "conv2.lin.output": 2,
    },
]


@pytest.mark.parametrize("bits", GCN_BITS, ids=["w8a8", "mixed-w2w4-e4-a4a2"])
def test_gcn_matches_the_integer_executor(graphs, tmp_path, bits, pack_every_table):
    frozen = _frozen(PlanetoidGCN(FEATURES, 7, hidden=32), graphs[0], bits)
    artifact = _check_integer(frozen, graphs, tmp_path)
    entries = artifact.manifest["backend_entries"]
    assert entries["csr_aggregations"] == 2 and entries["target"]["kind"] == "llvm"
    assert entries["narrow_aggregations"] == (0 if bits is None else 1)  # conv2's 2-bit messages
    assert artifact.manifest["precision"] == "integer"


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "int8-containers"])
def test_narrow_codes_aggregate_packed_or_not_with_the_same_integers(graphs, tmp_path, pack_every_table, packed):
    """2- and 4-bit message tables: packed before the gather (forced here for a small graph: by default only
    tables past ``PACK_FROM_BYTES`` of rows of a cache line or more are), read as int8 by the narrow kernel, or
    (``packed=False``) by the int8 kernel; all give the integer program's outputs."""
    bits = {"conv1.lin.output": 4, "conv2.lin.output": 2, "conv1.lin.input": 4}
    frozen = _frozen(PlanetoidGCN(FEATURES, 7, hidden=33), graphs[0], bits)  # 33 channels: a partial block
    program = mq.lower(frozen)
    options = {} if packed else {"packed": False}
    path = mq.export(frozen, graphs[0], tmp_path / "a", backend="tvm", backend_options=options)
    artifact = mq.load_artifact(path)
    assert artifact.manifest["backend_entries"]["narrow_aggregations"] == (2 if packed else 0)
    for inputs in graphs:
        assert (artifact(*inputs) - program(*inputs)).abs().max().item() <= output_step(program) * 1.001


def test_generic_relax_path_is_exact_too(graphs, tmp_path, monkeypatch):
    """Without the hand-written kernels (no VNNI on the CPU, aggregations not in CSR form) the same program runs
    on Relax's own matmul and scatter_elements, and must be just as exact."""
    import tvm

    from mixq_compile.runtimes.tvm import backend as tvm_relax

    monkeypatch.setattr(tvm_relax, "find_aggregations", lambda *args: [])
    monkeypatch.setattr(tvm.target.codegen, "target_has_features", lambda *args: False)
    frozen = _frozen(PlanetoidGCN(FEATURES, 7, hidden=32), graphs[0])
    artifact = _check_integer(frozen, graphs, tmp_path)
    assert artifact.manifest["backend_entries"]["csr_aggregations"] == 0


def test_sage_matches_the_integer_executor(graphs, tmp_path, monkeypatch):
    frozen = _frozen(SAGE(FEATURES, 7, hidden=32), graphs[0])
    artifact = _check_integer(frozen, graphs, tmp_path)
    assert artifact.manifest["backend_entries"]["csr_aggregations"] == 2
    if artifact.manifest["backend_entries"]["vnni"]:  # a CPU without VNNI gets a clear error, not SIGILL
        monkeypatch.setenv("MIXQ_ISA", "avx2")  # load as an AVX2-only CPU would
        with pytest.raises(BackendUnavailableError, match=r"avx512.*export it again on this machine"):
            mq.load_artifact(artifact.path)


def test_gin_integer_and_fp32_with_a_dynamic_number_of_graphs(tmp_path):
    """GIN: batch norm (a float island), max pooling and a pooling size read from the data (``batch.max() + 1``,
    a run-time shape in Relax); checked on batches of 4 and 7 graphs."""
    batches = random_batch(4, 10, FEATURES), random_batch(7, 13, FEATURES, seed=1)
    model = TUGIN(FEATURES, 3, hidden=32, layers=2).eval()
    frozen = _frozen(model, batches[0])
    _check_integer(frozen, batches, tmp_path)
    artifact = mq.load_artifact(mq.export(model, batches[0], tmp_path / "f", backend="tvm"))
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(artifact(*batch), model(*batch), atol=1e-4, rtol=1e-4)


def test_graph_norm_float_island_matches_the_integer_executor(tmp_path):
    """GraphNorm between integer layers: per-graph mean and variance in float (row counts from ``new_ones``,
    ``clamp``, ``div``, ``pow``, ``sqrt``, and a ``view(-1, 1)`` reshape), on batches of 4 and 7 graphs."""
    batches = random_batch(4, 10, FEATURES), random_batch(7, 13, FEATURES, seed=1)
    frozen = _frozen(GraphNormGIN(FEATURES), batches[0])
    _check_integer(frozen, batches, tmp_path)


class _MeanOverOneHead(nn.Module):
    """GeneralConv's pattern: messages as ``[E, heads=1, C]``, a mean over the heads, then a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = GCNConv(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.conv(x, edge_index)
        return h.view(-1, 1, FEATURES).mean(1) + h


def test_a_reduction_over_a_size_one_axis_followed_by_an_add_is_exact(graphs, tmp_path):
    """Such a reduction normalizes to an all-spatial TIR block that keeps its init; inlining the add into it (as
    the elementwise schedule did) added the residual twice."""
    model = _MeanOverOneHead().eval()
    artifact = mq.load_artifact(mq.export(model, graphs[0], tmp_path / "m", backend="tvm"))
    with torch.no_grad():
        for inputs in graphs:
            torch.testing.assert_close(artifact(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)


def test_fp32_artifact_matches_the_model(graphs, tmp_path):
    model = PlanetoidGCN(FEATURES, 7, hidden=32).eval()
    artifact = mq.load_artifact(mq.export(model, graphs[0], tmp_path / "f", backend="tvm"), cache_structure=True)
    assert artifact.manifest["precision"] == "fp32" and artifact.manifest["backend_entries"]["csr_aggregations"] == 2
    with torch.no_grad():
        for x, edge_index in graphs:
            torch.testing.assert_close(artifact(x, edge_index), model(x, edge_index), atol=1e-4, rtol=1e-4)


class _CumSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = GCNConv(FEATURES, 4)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.conv(x, edge_index)
        return h.cumsum(0) + h.cumprod(1)


def test_unsupported_op_names_every_op_and_the_fix(graphs, tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"2 op\(s\).*cumsum.*cumprod.*backend='torch'"):
        mq.export(_CumSum().eval(), graphs[0], tmp_path / "s", backend="tvm")
    assert not (tmp_path / "s").exists()


class _PlainGCN(nn.Module):
    """Features straight into the first conv (no dropout in front): PyG's self-loop count reads ``x.size(0)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = GCNConv(FEATURES, 16), GCNConv(16, 4)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


def test_a_gcn_whose_input_feeds_the_conv_directly_exports_with_its_normalisation_in_structure(graphs, tmp_path):
    """The node count was read from the quantized features, which pulled arange / degree / pow into the feature
    program (uncached, and TVM has no pow_ converter)."""
    frozen = _frozen(_PlainGCN(), graphs[0])
    program = mq.lower(frozen)
    feature_ops = {str(n.target) for n in program.features.graph.nodes if n.op == "call_function"}
    assert not any("pow" in op or "arange" in op for op in feature_ops)
    artifact = mq.load_artifact(mq.export(frozen, graphs[0], tmp_path / "g", backend="tvm"))
    for graph in graphs:
        torch.testing.assert_close(artifact(*graph), program(*graph), rtol=0, atol=1e-6)


def test_unavailable_reason_says_how_to_install(monkeypatch):
    backend = get_backend("tvm")
    assert backend.unavailable_reason() is None
    monkeypatch.setitem(sys.modules, "tvm", None)
    assert "pip install 'mixq_compile[tvm]'" in backend.unavailable_reason()


@pytest.mark.parametrize(("k", "o"), [(5, 3), (1024, 16), (2500, 20)])
def test_exact_float_dense_kernel_is_exact_past_its_chunk_bound(k, o):
    """The kernel CPUs without VNNI use: worst-case codes (-128 * -128 on every step), K across 1024-step chunks,
    built for Haswell (AVX2)."""
    import numpy as np
    import tvm

    from mixq_compile.runtimes.tvm import kernels as TK

    module = tvm.IRModule({"main": TK.dense_int_f32(k, o).with_attr("global_symbol", "main")})
    lib = tvm.compile(module, target={"kind": "llvm", "mcpu": "haswell"})
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, (37, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, o)).astype(np.int8)
    a[0], w[:, 0] = -128, -128
    corr = rng.integers(-100, 100, (o,)).astype(np.int32)
    out = tvm.runtime.empty((37, o), "int32")
    weight = TK.pad_columns(w.astype(np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(weight), tvm.runtime.tensor(corr), out)
    expected = (a.astype(np.int64) @ w.astype(np.int64)).astype(np.int32) - corr
    assert np.array_equal(out.numpy(), expected)


@pytest.mark.parametrize("mcpu", MCPUS)
@pytest.mark.parametrize("w_bits", [8, 4, 2], ids=["int8-weights", "packed4", "packed2"])
@pytest.mark.parametrize(
    ("k", "o", "bits"), [(5, 3, (-128, 127)), (300, 20, (0, 15)), (1433, 128, (-128, 127)), (33, 300, (-8, 7))]
)
def test_sparse_input_kernel_equals_quantize_then_linear(k, o, bits, w_bits, mcpu):
    """The zero-skipping input-layer kernel against the instructions it replaces, bit for bit: exact ties on the
    quantization grid, negative and positive features, -0.0, empty rows, feature counts around the 16-feature
    zero test and outputs past one 128-channel block; int8 weights, or 4- and 2-bit ones stored packed (output
    counts that end inside a packed block); built for AVX2 and AVX-512 targets."""
    import numpy as np
    import tvm

    from mixq_compile.ir import instructions as K
    from mixq_compile.ops.packed import pack_reference
    from mixq_compile.runtimes.tvm import kernels as TK

    gen = torch.Generator().manual_seed(k)
    x = torch.randn(41, k, generator=gen) * (torch.rand(41, k, generator=gen) < 0.05)
    scale, zero = 0.02, float((bits[0] + bits[1] + 1) // 2 if bits[0] < 0 else bits[0])
    x[1, : min(k, 9)] = (torch.arange(min(k, 9)) + 0.5) * scale  # lands exactly on .5 after the division
    x[2] = 0.0
    x[3, : min(k, 20)] = -0.0
    w_qmin = -(2 ** (w_bits - 1))
    w_t = torch.randint(w_qmin, -w_qmin, (k, o), dtype=torch.int8, generator=gen)
    w_t[0, 0], w_t[-1, -1] = w_qmin, -w_qmin - 1  # both ends of the weights' range
    bias = torch.randint(-1000, 1000, (o,), dtype=torch.int32, generator=gen)
    if w_bits == 8:
        kernel, weight = TK.quantize_linear_sparse(k, o, scale, zero, *bits), w_t
    else:
        kernel = TK.quantize_linear_sparse_packed(k, o, scale, zero, *bits, w_bits, w_qmin)
        weight = pack_reference(w_t, w_qmin, w_bits)
    lib = _built(kernel, mcpu)
    out, flag = tvm.runtime.empty((41, o), "int32"), tvm.runtime.tensor(np.array([7], np.int32))
    lib["main"](*(tvm.runtime.tensor(t.numpy()) for t in (x, weight, bias)), out, flag)
    s, z = torch.tensor(scale), torch.tensor(zero)
    expected = K.linear_int(K.quantize(x, s, z, *bits), z, w_t, w_t.sum(0, dtype=torch.int32), bias)
    assert np.array_equal(out.numpy(), expected.numpy())
    assert flag.numpy()[0] == 0  # finite features
    x[40, k - 1] = float("nan")  # the last feature of the last row: past every full 16-feature chunk when k = 1433
    lib["main"](*(tvm.runtime.tensor(t.numpy()) for t in (x, weight, bias)), out, flag)
    assert flag.numpy()[0] == 1


@pytest.mark.parametrize("weight_bits", [8, 2])
def test_a_gcn_on_sparse_features_takes_the_sparse_input_kernel(tmp_path, weight_bits):
    """Bag-of-words-like features (2 % non-zero): the input layer is one zero-skipping kernel, chosen at export from
    the example's density, and the artifact stays exact on sparse and on dense features; 2-bit weights are stored
    and read packed."""
    gen = torch.Generator().manual_seed(3)
    sparse = [(torch.rand(n, 200, generator=gen) < 0.02).float() for n in (120, 333)]
    graphs = [(x, torch.randint(0, x.shape[0], (2, 4 * x.shape[0]), generator=gen)) for x in sparse]
    frozen = _frozen(PlanetoidGCN(200, 7, hidden=32), graphs[0], {"conv1.lin.weight": weight_bits})
    artifact = _check_integer(frozen, graphs, tmp_path)
    assert artifact.manifest["backend_entries"]["sparse_input_linears"] == 1
    assert artifact.manifest["backend_entries"]["packed_input_weights"] == (weight_bits < 8)
    assert "sparse kernel" in artifact.kernel_paths["input_layer"]
    dense = (torch.rand(120, 200, generator=gen), graphs[0][1])
    program = mq.lower(frozen)
    assert (artifact(*dense) - program(*dense)).abs().max().item() <= output_step(program) * 1.001
    # the kernel tests the features for NaN/Inf as it scans them, so the artifact makes no pass of its own
    assert artifact.finite_checked_later == {"x"}
    for bad, (row, col) in zip((float("nan"), float("inf"), -float("inf")), ((0, 0), (77, 199), (119, 100))):
        dirty = graphs[0][0].clone()
        dirty[row, col] = bad
        with pytest.raises(mq.InputValueError, match=r"NaN or infinite.*nan_to_num"):
            artifact(dirty, graphs[0][1])


def test_artifacts_loaded_side_by_side_run_their_own_kernels(tmp_path):
    """Hand-written kernels are compiled apart and called by symbol; two artifacts whose sparse input kernels
    differ (another quantization scale is baked into each) loaded in one process each run their own."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(150, 200, generator=gen) < 0.02).float()
    edge_index = torch.randint(0, 150, (2, 600), generator=gen)
    loaded = []
    for k, factor in enumerate((1.0, 7.0)):
        graph = (x * factor, edge_index)
        frozen = _frozen(PlanetoidGCN(200, 7, hidden=32), graph)
        path = mq.export(frozen, graph, tmp_path / str(k), backend="tvm")
        loaded.append((mq.load_artifact(path), mq.lower(frozen), graph))
    for artifact, program, graph in loaded:
        assert artifact.manifest["backend_entries"]["sparse_input_linears"] == 1
        assert (artifact(*graph) - program(*graph)).abs().max().item() <= output_step(program) * 1.001


class _MaxSage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.conv1, self.conv2 = SAGEConv(FEATURES, FEATURES, aggr="max"), SAGEConv(FEATURES, 5, aggr="min")

    def forward(self, x, edge_index):
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


def test_max_and_min_aggregations_leave_rows_without_in_edges_at_zero(graphs, tmp_path):
    """A node no edge points to aggregates nothing: PyG gives 0 there. TVM folded the empty-row test against
    INT32_MIN to false, so such rows (absent from the export example) came out at -2**31 (found on SAGEConv-max)."""
    frozen = _frozen(_MaxSage(), graphs[0])
    x, edge_index = graphs[1]
    lonely = torch.isin(edge_index[1], torch.arange(5))
    edge_index = torch.where(lonely, (edge_index + 5) % x.shape[0], edge_index)  # nodes 0-4 receive nothing
    assert not torch.isin(edge_index[1], torch.arange(5)).any()
    program = mq.lower(frozen)
    artifact = mq.load_artifact(mq.export(frozen, graphs[0], tmp_path / "a", backend="tvm"))
    torch.testing.assert_close(artifact(x, edge_index), program(x, edge_index), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mcpu", MCPUS)
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize(
    ("channels", "bits", "qmin", "weight"),
    [(7, 4, -8, "int32"), (256, 2, 0, None), (130, 4, -3, "int32"), (64, 2, -2, "int32"), (33, 4, 0, None)],
)
def test_narrow_csr_kernel_equals_the_row_sums_and_packs_as_the_torch_backend(channels, bits, qmin, weight, pack, mcpu):
    """The 2/4-bit CSR kernel, packing its table (the layout ``mixq::pack`` writes) or reading it as int8, against
    numpy bit for bit: codes at both ends of their range, partial 16-byte blocks, a hub row, rows without edges."""
    import numpy as np
    import tvm

    from mixq_compile.ops.packed import pack_reference, packed_stride
    from mixq_compile.runtimes.tvm import kernels as TK

    rng = np.random.default_rng(channels)
    nodes, rows = 50, 40
    dst, col, rowptr = _csr_graph(rng, nodes, rows)
    h = rng.integers(qmin, qmin + 2**bits, (nodes, channels)).astype(np.int8)
    h[0], h[1] = qmin, qmin + 2**bits - 1
    zero = rng.integers(-128, 128, channels).astype(np.int32)
    w = rng.integers(0, 256, dst.size).astype(np.int32) if weight else np.ones(1, np.int32)  # unused dummy
    kernel = TK.csr_aggregate_narrow(channels, bits, qmin, weight, 0 if pack else 1 << 40)
    lib = _built(kernel, mcpu)
    out = tvm.runtime.empty((rows, channels), "int32")
    packed = tvm.runtime.tensor(np.zeros((nodes, packed_stride(channels, bits)), np.uint8))
    lib["main"](*(tvm.runtime.tensor(a) for a in (rowptr, col, w, h, zero)), out, packed)
    expected = _row_sums(dst, col, h.astype(np.int64), zero, w if weight else None, rows)
    assert np.array_equal(out.numpy(), expected.astype(np.int32))
    written = pack_reference(torch.from_numpy(h), qmin, bits).numpy() if pack else np.zeros_like(packed.numpy())
    assert np.array_equal(packed.numpy(), written)


def test_tvm_runs_on_as_many_threads_as_torch(tmp_path):
    """TVM's pool takes half the hardware threads on x86 unless told (one on a 2-vCPU machine): an artifact's
    kernels run on torch's thread count, and a pool started too small before the artifact says so."""
    import subprocess

    threads = max(2, torch.get_num_threads())
    script = (
        "import os, warnings, torch, tvm\n"
        "os.environ.pop('TVM_NUM_THREADS', None)\n"
        f"torch.set_num_threads({threads})\n"
        "from mixq_compile.runtimes.tvm.backend import runtime_threads\n"
        "if os.environ.get('EARLY'):\n"
        "    tvm.get_global_func('runtime.NumThreads')()\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print(runtime_threads(), len(caught), tvm.get_global_func('runtime.NumThreads')())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.split() == [str(threads), "0", str(threads)]
    early = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**env, "EARLY": "1"})
    started, warned, _ = early.stdout.split()
    assert warned == ("1" if int(started) < threads else "0")  # TVM's own default: half the hardware threads


@pytest.mark.parametrize("mcpu", MCPUS)
@pytest.mark.parametrize(
    ("channels", "table", "weight", "centered"),
    [
        (7, "int8", "int32", True),
        (256, "int8", "int32", True),
        (130, "int8", None, False),
        (33, "float32", None, False),
    ],
)
def test_csr_aggregate_kernel_equals_the_row_sums(channels, table, weight, centered, mcpu):
    """The CSR row-sum kernel against numpy, bit for bit for codes: rows without edges, a hub row, the last edges
    (whose prefetch would run past the edge list), the zero-point taken out once per row, odd channel counts."""
    import numpy as np
    import tvm

    from mixq_compile.runtimes.tvm import kernels as TK

    rng = np.random.default_rng(channels)
    nodes, rows = 50, 40
    dst, col, rowptr = _csr_graph(rng, nodes, rows)
    if table == "int8":
        h = rng.integers(-128, 128, (nodes, channels)).astype(np.int8)
        zero = rng.integers(-128, 128, channels).astype(np.int32) if centered else np.zeros(channels, np.int32)
    else:
        h = rng.standard_normal((nodes, channels)).astype(np.float32)
        zero = np.zeros(channels, np.float32)
    w = rng.integers(0, 256, dst.size).astype(np.int32) if weight else np.ones(1, zero.dtype)  # unused dummy
    kernel = TK.csr_aggregate(channels, table, weight, centered)
    lib = _built(kernel, mcpu)
    out = tvm.runtime.empty((rows, channels), "float32" if table == "float32" else "int32")
    lib["main"](*(tvm.runtime.tensor(a) for a in (rowptr, col, w, h, zero)), out)
    expected = _row_sums(
        dst, col, h.astype(np.float64 if table == "float32" else np.int64), zero, w if weight else None, rows
    )
    if table == "float32":
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)
    else:
        assert np.array_equal(out.numpy(), expected.astype(np.int64).astype(np.int32))
