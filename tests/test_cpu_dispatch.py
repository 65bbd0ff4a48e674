"""Kernels chosen per CPU are exact on every path this CPU can run (``MIXQ_ISA`` forces the AVX2 and portable
paths on a VNNI machine), artifacts say which path they took, and a wrong artifact is refused at export and load."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

import mixq_compile as mq
from mixq_compile import cpu
from mixq_compile.ir import instructions as K
from mixq_compile.ops import linear, native
from mixq_compile.runtimes import available_backends
from mixq_compile.runtimes.onnx import matmul as onnx_matmul

from helpers import MLP, random_graph

RUNNABLE = [level for level in cpu.LEVELS if cpu.LEVELS.index(level) <= cpu.LEVELS.index(cpu.native_level())]


@pytest.fixture(params=cpu.LEVELS)
def level(request, monkeypatch):
    if request.param not in RUNNABLE:
        pytest.skip(f"this CPU ({cpu.model()}) cannot run the {request.param} path (its level: {cpu.native_level()})")
    monkeypatch.setenv(cpu.ENV, request.param)
    return request.param


def test_the_level_can_be_forced_down_but_not_up(monkeypatch):
    monkeypatch.setenv(cpu.ENV, "portable")
    assert cpu.level() == "portable" and not cpu.at_least("avx2") and cpu.describe()["forced"]
    monkeypatch.setenv(cpu.ENV, "sse9")
    with pytest.raises(cpu.CpuLevelError, match="not a kernel level"):
        cpu.level()
    if cpu.native_level() != cpu.LEVELS[-1]:
        monkeypatch.setenv(cpu.ENV, cpu.LEVELS[-1])
        with pytest.raises(cpu.CpuLevelError, match="more than this CPU"):
            cpu.level()
    monkeypatch.setenv(cpu.ENV, "native")
    assert cpu.level() == cpu.native_level() and cpu.model() in cpu.summary()


@pytest.mark.parametrize(
    ("m", "k", "n", "dtype"),
    [(37, 5, 3, torch.int8), (64, 1024, 16, torch.int8), (33, 1025, 17, torch.int8), (9, 3001, 8, torch.int8),
     (20, 70, 11, torch.int16), (16, 140_000, 16, torch.int8)],
)  # fmt: skip
def test_linear_int_equals_the_reference_on_every_path(level, m, k, n, dtype):
    """Random codes, and the worst case for exactness (every product -128 * -128, K past the 1024-term chunk; at
    K = 140,000 the int32 sums wrap around)."""
    gen = torch.Generator().manual_seed(k)
    info = torch.iinfo(dtype)
    for codes in (
        torch.randint(info.min, info.max + 1, (m, k), dtype=dtype, generator=gen),
        torch.full((m, k), info.min, dtype=dtype),
    ):
        w_t = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=gen)
        w_t[:, 0] = -128
        w_sum = w_t.to(torch.int32).sum(0)
        zero, bias = torch.tensor(3), torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=gen)
        expected = K.linear_int(codes, zero, w_t, w_sum, bias)
        got = torch.ops.mixq.linear_int(codes, zero, w_t, w_sum, bias)
        assert torch.equal(got, expected)
    # at "amx" the tiles run unless this build has no AMX code (an older compiler) or the OS refuses the tile state
    amx = "int8_amx" if native.amx_ready() else "int8_vnni"
    pairs = "int8_pairs" if native.library() is not None else "float_exact"  # AVX2 / AVX-512 without VNNI
    expected = {"amx": amx, "vnni": "int8_vnni", "avx512": pairs, "avx2": pairs}.get(level, "float_exact")
    expected = expected if dtype == torch.int8 else "float_exact"
    assert linear.path(codes, w_t) == expected


def test_the_amx_level_runs_the_tiles_where_the_build_and_the_os_allow(monkeypatch):
    if cpu.native_level() != "amx":
        pytest.skip(f"this CPU ({cpu.model()}) has no AMX-INT8 tiles (its level: {cpu.native_level()})")
    if native.library() is None:
        pytest.skip(f"native kernels unavailable here: {native.unavailable_reason()}")
    assert linear.int8_path() == ("int8_amx" if native.library().amx_available() else "int8_vnni")
    monkeypatch.setenv(cpu.ENV, "vnni")
    assert not native.amx_ready() and linear.int8_path() == "int8_vnni"


@pytest.mark.parametrize(("m", "n"), [(0, 3), (4, 0)])
def test_linear_int_takes_empty_operands_on_every_path(level, m, n):
    codes, w_t = torch.ones((m, 5), dtype=torch.int8), torch.ones((5, n), dtype=torch.int8)
    w_sum, zero, bias = w_t.to(torch.int32).sum(0), torch.tensor(3), torch.arange(n, dtype=torch.int32)
    got = torch.ops.mixq.linear_int(codes, zero, w_t, w_sum, bias)
    assert torch.equal(got, K.linear_int(codes, zero, w_t, w_sum, bias)) and got.shape == (m, n)
    multiplier, out_zero = torch.tensor(0.01), torch.tensor(1, dtype=torch.int32)
    codes_out = torch.ops.mixq.linear_int_requantize(codes, zero, w_t, w_sum, bias, multiplier, out_zero, -128, 127)
    assert codes_out.shape == (m, n) and codes_out.dtype == torch.int8


def test_linear_int_stays_exact_when_fp32_matmuls_are_allowed_to_round(monkeypatch):
    monkeypatch.setenv(cpu.ENV, "avx2" if "avx2" in RUNNABLE else "portable")
    codes = torch.full((8, 2000), -128, dtype=torch.int8)
    w_t = torch.full((2000, 4), -128, dtype=torch.int8)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = linear.float_exact_matmul(codes, w_t)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert torch.equal(got, torch.full((8, 4), 2000 * 16384, dtype=torch.int32))


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    args, other = random_graph(80, 300, 64), random_graph(131, 500, 64, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(MLP(64, 48).eval(), args)
    qmodel(*args)
    frozen = mq.freeze(qmodel, {"lin1.weight": 8, "lin2.weight": 4}).eval()
    return frozen, args, other


def _features(path) -> onnx.ModelProto:
    return onnx.load(path / "features.onnx")


def test_u8u8_rewrite_changes_no_result(mlp, tmp_path):
    frozen, args, other = mlp
    path = mq.export(frozen, args, tmp_path / "a", backend="onnx", backend_options={"matmul": "u8s8"})
    model = _features(path)
    rewritten = onnx_matmul.as_u8u8(model)
    assert onnx_matmul.signed_weight_matmuls(model) and not onnx_matmul.signed_weight_matmuls(rewritten)
    types = {t.data_type for t in rewritten.graph.initializer}
    assert onnx.TensorProto.UINT8 in types and onnx.TensorProto.INT4 in types, "4-bit weights stay packed"
    from mixq_compile.runtimes.onnx.backend import load_onnx

    artifact = mq.load_artifact(path)
    structure = artifact.structure(*other)
    feeds = (*other, *structure)
    for a, b in zip(load_onnx(model)(*feeds), load_onnx(rewritten)(*feeds)):
        assert torch.equal(a, b)


def test_onnx_formulation_follows_the_cpu_at_export_and_at_load(mlp, level, tmp_path):
    frozen, args, other = mlp
    program = mq.lower(frozen)
    exact_here = "u8s8" if level in ("vnni", "amx") else "u8u8"
    path = mq.export(frozen, args, tmp_path / "auto", backend="onnx")
    assert mq.load_artifact(path).manifest["backend_entries"]["matmul"] == exact_here
    # an artifact made for a VNNI machine, loaded here: rewritten in memory unless this CPU has VNNI
    vnni_made = mq.export(frozen, args, tmp_path / "u8s8", backend="onnx", backend_options={"matmul": "u8s8"})
    artifact = mq.load_artifact(vnni_made)
    assert artifact.kernel_paths["matmul_integer"].startswith(exact_here)
    torch.testing.assert_close(artifact(*other), program(*other), rtol=0, atol=1e-6)
    manifest = artifact.manifest
    assert manifest["cpu"]["level"] == level and manifest["selfcheck"]["checked_at_export"]


@pytest.mark.parametrize("backend", ["torch", "onnx", "tvm"])
def test_every_backend_is_exact_on_every_path(mlp, level, backend, tmp_path):
    usable, skipped = available_backends([backend])
    if not usable:
        pytest.skip(skipped[backend])
    frozen, args, other = mlp
    artifact = mq.load_artifact(mq.export(frozen, args, tmp_path / backend, backend=backend))
    assert artifact.manifest["cpu"]["level"] == level and artifact.kernel_paths
    torch.testing.assert_close(artifact(*other), mq.lower(frozen)(*other), rtol=0, atol=1e-6)


def test_a_wrong_artifact_is_refused_at_export_and_nothing_is_written(mlp, tmp_path, monkeypatch):
    frozen, args, _ = mlp
    from mixq_compile.runtimes.torch.backend import TorchBackend

    real_load = TorchBackend.load

    def off_by_one(self, directory, entries):
        structure, features = real_load(self, directory, entries)
        return structure, lambda *inputs: tuple(t + 1 for t in features(*inputs))

    monkeypatch.setattr(TorchBackend, "load", off_by_one)
    with pytest.raises(mq.ArtifactError, match="does not compute what the integer program computes"):
        mq.export(frozen, args, tmp_path / "wrong", backend="torch")
    assert not (tmp_path / "wrong").exists()


def test_a_wrong_artifact_is_refused_at_load(mlp, tmp_path, monkeypatch):
    frozen, args, other = mlp
    path = mq.export(frozen, args, tmp_path / "a", backend="onnx")
    from mixq_compile.runtimes.onnx import backend as onnx_ort

    real = onnx_ort.load_onnx

    def skewed(model):
        run = real(model)
        return lambda *i: tuple(t * 1.5 if t.is_floating_point() else t for t in run(*i))

    monkeypatch.setattr(onnx_ort, "load_onnx", skewed)
    with pytest.raises(mq.ArtifactError, match="gives wrong answers on this CPU"):
        mq.load_artifact(path)
    artifact = mq.load_artifact(path, verify=False)  # the user's explicit choice
    assert not torch.equal(artifact(*other), mq.lower(frozen)(*other))


def test_selfcheck_stores_sparse_features_compactly(tmp_path):
    from mixq_compile import selfcheck

    x = torch.zeros(500, 300)
    x[torch.arange(500), torch.arange(500) % 300] = 1.0
    edge_index = torch.randint(0, 500, (2, 2000))
    out = (torch.randn(500, 4),)
    selfcheck.save(tmp_path, [((x, edge_index), out), ((x, edge_index.flip(0)), (-out[0],))])
    size = (tmp_path / selfcheck.FILE).stat().st_size
    assert size < 2 * x.numel() * 4 / 10
    (inputs, outputs), (flipped, negated) = selfcheck.load(tmp_path)
    assert torch.equal(inputs[0], x) and torch.equal(inputs[1], edge_index) and torch.equal(outputs[0], out[0])
    assert (
        torch.equal(flipped[0], x) and torch.equal(flipped[1], edge_index.flip(0)) and torch.equal(negated[0], -out[0])
    )
    agreement = selfcheck.compare(out, (out[0] + np.float32(0.5),), "integer")
    assert not agreement.ok and agreement.mismatched == 2000


def test_export_never_replaces_a_directory_that_is_not_an_artifact(mlp, tmp_path):
    frozen, args, _ = mlp
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "important.txt").write_text("keep me")
    with pytest.raises(mq.ArtifactError, match="not a mixq_compile artifact"):
        mq.export(frozen, args, folder, backend="torch")
    assert (folder / "important.txt").read_text() == "keep me"
    again = mq.export(frozen, args, tmp_path / "art", backend="torch")
    with pytest.raises(mq.ArtifactError, match="overwrite=True"):
        mq.export(frozen, args, again, backend="torch")
    assert mq.export(frozen, args, again, backend="torch", overwrite=True) == again  # replaced only when asked


@pytest.mark.parametrize(("dtype", "k"), [(torch.int8, 1), (torch.int8, 1024), (torch.int8, 1025), (torch.int8, 3000),
                                          (torch.int16, 300), (torch.int16, 0)])  # fmt: skip
def test_the_float_exact_gemm_equals_the_integer_product_modulo_2_to_the_32(dtype, k):
    """One K-chunk or several, float32 or float64 chunks (int16 codes: sums past int32 wrap as int32 GEMMs do), the
    weights converted once per weight tensor: the same integers as an int64 product reduced to int32."""
    gen = torch.Generator().manual_seed(k)
    info = torch.iinfo(dtype)
    codes = torch.randint(info.min, info.max + 1, (37, k), generator=gen).to(dtype)
    codes[0] = info.min  # the extreme products, every term alike
    w_t = torch.randint(info.min, info.max + 1, (k, 6), generator=gen).to(dtype)
    w_t[:, 0] = info.min
    want = (codes.to(torch.int64) @ w_t.to(torch.int64)).to(torch.int32)
    for _ in range(2):  # the second call reads the memoized float weights
        assert torch.equal(linear.float_exact_matmul(codes, w_t), want)
    w_t.add_(1)  # an in-place change of the weights is seen
    want = (codes.to(torch.int64) @ w_t.to(torch.int64)).to(torch.int32)
    assert torch.equal(linear.float_exact_matmul(codes, w_t), want)
