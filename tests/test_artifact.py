"""export / load_artifact / profile with the torch backend: manifest, checksums, dynamic sizes, bad artifacts."""

from __future__ import annotations

import json
import warnings
import zipfile

import pytest
import torch

import mixq_compile as mq
from mixq_compile import cpu
from mixq_compile.models import PlanetoidGCN
from mixq_compile.runtimes import BackendUnavailableError, available_backends, get_backend

from helpers import MLP, output_step, random_graph


@pytest.fixture(scope="module")
def frozen_gcn():
    torch.manual_seed(0)
    args = random_graph(60, 240, 12)
    model = PlanetoidGCN(12, 5, hidden=16).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args)
    frozen = mq.freeze(qmodel, {"conv1.lin.weight": 4, "conv2.lin.weight": 2, "conv2.edge_weight": 4}).eval()
    return model, frozen, args


@pytest.fixture(scope="module")
def torch_artifact(frozen_gcn, tmp_path_factory):
    _, frozen, args = frozen_gcn
    return mq.export(frozen, args, tmp_path_factory.mktemp("a") / "gcn", backend="torch")


def test_manifest_records_signature_bits_costs_versions_and_checksums(frozen_gcn, torch_artifact):
    _, frozen, args = frozen_gcn
    manifest = json.loads((torch_artifact / "manifest.json").read_text())
    assert manifest["backend"] == "torch" and manifest["precision"] == "integer"
    assert [i["name"] for i in manifest["inputs"]] == ["x", "edge_index"]
    assert manifest["inputs"][0]["dynamic_dims"] == [0] and manifest["inputs"][1]["dynamic_dims"] == [1]
    assert manifest["site_bits"] == frozen.chosen_bits()
    for convention in ("wa", "paper"):
        assert manifest["bitops"][convention] == pytest.approx(mq.bitops(frozen, args, convention=convention).bitops)
    assert manifest["model_bytes"] < 12 * 16 * 4  # sub-8-bit weights are counted at their width
    assert {"torch", "mixq_compile"} <= set(manifest["versions"])
    assert set(manifest["files"]) == {"structure.pt2", "features.pt2", "selfcheck.safetensors"}
    assert manifest["cpu"]["level"] in cpu.LEVELS and manifest["cpu"]["model"]
    assert manifest["selfcheck"]["checked_at_export"] and manifest["selfcheck"]["mismatched"] == 0
    assert "linear_int" in manifest["kernel_paths"]
    assert manifest["backend_entries"]["csr_aggregations"] == 2, "both layers aggregate with mixq::csr_sum"
    assert manifest["backend_entries"]["fused_input_linears"] == 1, "the input layer: quantize + GEMM in one op"
    assert "mixq.quantize_linear" in str(torch.export.load(torch_artifact / "features.pt2").graph)
    assert all(len(digest) == 64 for digest in manifest["files"].values())


def test_loaded_artifact_matches_the_reference_executor_on_a_new_graph_size(frozen_gcn, torch_artifact):
    _, frozen, args = frozen_gcn
    artifact = mq.load_artifact(torch_artifact)
    program = mq.lower(frozen)
    other = random_graph(97, 500, 12, seed=4)
    for graph in (args, other):
        assert torch.equal(artifact(*graph), program(*graph))


def test_structure_cache_reuses_until_the_topology_changes(frozen_gcn, torch_artifact):
    _, frozen, args = frozen_gcn
    artifact = mq.load_artifact(torch_artifact, cache_structure=True)
    first = artifact(*args)
    assert artifact.structure_cache.misses == 1
    assert torch.equal(artifact(*args), first) and artifact.structure_cache.misses == 1
    new_features = (torch.randn_like(args[0]), args[1])  # same graph, new features: structure is reused
    assert torch.equal(artifact(*new_features), mq.lower(frozen)(*new_features))
    assert artifact.structure_cache.misses == 1
    other = random_graph(60, 240, 12, seed=9)
    assert torch.equal(artifact(*other), mq.lower(frozen)(*other))
    assert artifact.structure_cache.misses == 2


def test_fp32_artifact_matches_the_fp32_model(frozen_gcn, tmp_path):
    model, _, args = frozen_gcn
    artifact = mq.load_artifact(mq.export(model, args, tmp_path / "fp32", backend="torch"))
    assert artifact.manifest["precision"] == "fp32"
    with torch.no_grad():
        assert torch.allclose(artifact(*args), model(*args), atol=1e-5)


def test_corrupt_truncated_or_incomplete_artifacts_are_refused(torch_artifact, tmp_path):
    import shutil

    for damage in ("flip", "truncate", "delete", "manifest"):
        copy = tmp_path / damage
        shutil.copytree(torch_artifact, copy)
        target = copy / "features.pt2"
        if damage == "flip":
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))
        elif damage == "truncate":
            target.write_bytes(target.read_bytes()[:100])
        elif damage == "delete":
            target.unlink()
        else:
            (copy / "manifest.json").write_text("{not json")
        with pytest.raises(mq.ArtifactError, match="export"):
            mq.load_artifact(copy)
    with pytest.raises(mq.ArtifactError, match=r"manifest\.json is missing"):
        mq.load_artifact(tmp_path / "nowhere")


def test_export_errors_name_the_fix(frozen_gcn, tmp_path):
    model, frozen, args = frozen_gcn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = mq.quantize(model, args)
    with pytest.raises(ValueError, match="freeze"):
        mq.export(mixed, args, tmp_path / "m", backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        mq.export(frozen, args, tmp_path / "m", backend="tensorrt")
    assert not (tmp_path / "m").exists()
    with pytest.raises(mq.InputSignatureError):
        mq.export(frozen, (args[0],), tmp_path / "m", backend="torch")


def test_wrong_inputs_to_an_artifact_raise_a_clear_error(torch_artifact):
    artifact = mq.load_artifact(torch_artifact)
    x, edge_index = random_graph(10, 20, 12)
    with pytest.raises(mq.InputSignatureError, match="rank"):
        artifact(x[0], edge_index)
    with pytest.raises(mq.InputSignatureError, match="dim 1"):
        artifact(torch.randn(10, 7), edge_index)


def test_profile_reports_latency_percentiles_memory_and_costs(frozen_gcn, torch_artifact):
    model, _, args = frozen_gcn
    report = mq.profile(torch_artifact, args, warmup=2, repeats=7)
    assert 0 < report.p10_ms <= report.median_ms <= report.p90_ms
    assert report.throughput_per_s == pytest.approx(1e3 / report.median_ms)
    assert report.bitops_wa > 0 and report.bitops_paper > 0 and report.model_bytes > 0
    assert report.peak_rss_mib > 0 and report.backend == "torch" and report.precision == "integer"
    eager = mq.profile(model, args, warmup=1, repeats=3, name="pyg")
    assert eager.bitops_wa is None and eager.backend == "eager"
    with pytest.raises(ValueError, match="repeats"):
        mq.profile(model, args, repeats=0)


def test_unavailable_backend_reason_is_raised_as_a_clear_error():
    backend = get_backend("torch")
    backend.unavailable_reason = lambda: "no such runtime here; install it with pip"
    with pytest.raises(BackendUnavailableError, match="install it"):
        backend.require()


def test_fixed_point_artifact_runs_and_records_its_requantization(frozen_gcn, tmp_path):
    _, frozen, args = frozen_gcn
    artifact = mq.load_artifact(mq.export(frozen, args, tmp_path / "fx", backend="torch", fixed_point=True))
    assert artifact.manifest["requantization"] == "fixed_point"
    assert torch.equal(artifact(*args), mq.lower(frozen, fixed_point=True)(*args))


def test_dense_options_keep_scatter_aggregations_and_a_separate_input_gemm(frozen_gcn, tmp_path):
    _, frozen, args = frozen_gcn
    options = {"sparse_aggregation": False, "sparse_input": False}
    path = mq.export(frozen, args, tmp_path / "scatter", backend="torch", backend_options=options)
    artifact = mq.load_artifact(path)
    assert artifact.manifest["backend_entries"]["csr_aggregations"] == 0
    assert artifact.manifest["backend_entries"]["fused_input_linears"] == 0
    graph = str(torch.export.load(path / "features.pt2").graph)
    assert "mixq.csr_sum" not in graph and "mixq.quantize_linear" not in graph
    assert "mixq.quantize.default" in graph, "blocked quantize of the input"
    assert torch.equal(artifact(*args), mq.lower(frozen)(*args))


@pytest.mark.slow
def test_aot_inductor_option_compiles_an_exact_feature_program(frozen_gcn, tmp_path):
    _, frozen, args = frozen_gcn
    path = mq.export(frozen, args, tmp_path / "aoti", backend="torch", backend_options={"aot_inductor": True})
    artifact = mq.load_artifact(path)
    assert artifact.manifest["backend_entries"]["aot_inductor"] is True
    other = random_graph(83, 400, 12, seed=5)
    for graph in (args, other):
        assert torch.equal(artifact(*graph), mq.lower(frozen)(*graph))
    # NaN features: found by the input layer inside the compiled program (no scan before the call), and raised as
    # the signature check would raise them, not as the RuntimeError AOTInductor wraps them in
    assert artifact.manifest["backend_entries"]["finite_checked_inputs"] == [0]
    dirty = other[0].clone()
    dirty[7, 3] = float("inf")
    with pytest.raises(mq.InputValueError, match=r"^the node features .* contains NaN or infinite values"):
        artifact(dirty, other[1])
    with pytest.raises(ValueError, match="aot_inductor"):
        mq.export(frozen, args, tmp_path / "bad", backend="torch", backend_options={"fast": True})


@pytest.mark.parametrize("backend", ["torch", "onnx", "tvm"])
def test_a_model_that_ignores_the_topology_exports_on_every_backend(backend, tmp_path):
    """Its structure program hands over one empty tensor (backends refuse a program without outputs)."""
    usable, skipped = available_backends([backend])
    if not usable:
        pytest.skip(skipped[backend])
    args, other = random_graph(50, 200, 16), random_graph(83, 410, 16, seed=2)
    model = MLP(16, 32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args)
    qmodel(*args)
    frozen = mq.freeze(qmodel).eval()
    program = mq.lower(frozen)
    for name, exported, reference in (("fp32", model, model), ("integer", frozen, program)):
        artifact = mq.load_artifact(mq.export(exported, args, tmp_path / name, backend=backend))
        with torch.no_grad():
            torch.testing.assert_close(artifact(*other), reference(*other), rtol=0, atol=1e-5)


def test_peak_rss_sees_an_allocation_inside_and_nests():
    """The high-water mark (or the sampler where /proc/self/clear_refs is not writable) catches a 200 MB
    temporary freed before the block ends; a nested PeakRss does not reset the outer one's peak."""
    from mixq_compile.profiling import PeakRss

    with PeakRss() as outer:
        big = torch.ones(50_000_000)  # 200 MB, touched
        del big
        with PeakRss() as inner:
            small = torch.ones(1000)
        del small
    assert outer.peak - outer.baseline > 150 * 2**20
    assert inner.peak >= inner.baseline


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_bound_artifact_serves_new_features_on_its_graph(frozen_gcn, backend, tmp_path):
    """bind() fixes the graph once: new features of the bound shape give the artifact's own answers; the caller's
    later writes to edge_index change nothing; a wrong shape, dtype, count or NaN is refused with the fix."""
    usable, skipped = available_backends([backend])
    if not usable:
        pytest.skip(skipped[backend])
    _, frozen, (x, edge_index) = frozen_gcn
    artifact = mq.load_artifact(mq.export(frozen, (x, edge_index), tmp_path / "a", backend=backend))
    graph = edge_index.clone()
    served = artifact.bind(x, graph)
    assert served.names == ["x"] and "takes ['x']" in repr(served)
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    for features in (x, other):
        assert torch.equal(served(features), artifact(features, edge_index))
    graph[0, :10] = 0  # the bound copy is not the caller's tensor
    assert torch.equal(served(other), artifact(other, edge_index))
    with pytest.raises(mq.InputSignatureError, match=r"bound shape .*bind the artifact again"):
        served(torch.randn(x.shape[0] + 1, x.shape[1]))
    with pytest.raises(mq.InputSignatureError, match=r"dtype"):
        served(x.double())
    with pytest.raises(mq.InputSignatureError, match=r"takes 1 input"):
        served(x, edge_index)
    dirty = other.clone()
    dirty[3, 3] = float("nan")
    with pytest.raises(mq.InputValueError, match=r"NaN or infinite"):
        served(dirty)
    with pytest.raises(mq.InputValueError, match="node id"):
        artifact.bind(x, torch.full_like(edge_index, x.shape[0]))


def test_node_ids_are_checked_once_per_cached_graph(frozen_gcn, tmp_path, monkeypatch):
    """A graph the structure cache holds from a checked call is not scanned for node ids again (the cache just
    compared it equal); another graph is, and a bad one is refused even right after a good one, or when the cache
    holds it from a direct ``structure()`` call."""
    from mixq_compile.ir import signature

    _, frozen, (x, edge_index) = frozen_gcn
    artifact = mq.load_artifact(mq.export(frozen, (x, edge_index), tmp_path / "a", backend="torch"))
    checks = []
    original = signature.IndexRule.check
    monkeypatch.setattr(signature.IndexRule, "check", lambda rule, *a: checks.append(rule) or original(rule, *a))
    first = artifact(x, edge_index)
    assert len(checks) == 1
    for _ in range(3):
        assert torch.equal(artifact(x, edge_index.clone()), first)  # an equal graph in a new tensor: a hit
    assert len(checks) == 1
    other = edge_index.flip(0).contiguous()
    artifact(x, other)
    assert len(checks) == 2
    bad = edge_index.clone()
    bad[0, 0] = x.shape[0]
    with pytest.raises(mq.InputValueError, match="node id"):
        artifact(x, bad)
    artifact.structure(x, other)  # cached by a call that checked nothing
    artifact.structure_cache.clear()
    artifact.structure(x, other)
    artifact(x, other)
    assert len(checks) == 4
    uncached = mq.load_artifact(tmp_path / "a", cache_structure=False)
    uncached(x, edge_index)
    uncached(x, edge_index)
    assert len(checks) == 6


def test_two_bit_artifact_stores_its_input_layer_weights_packed(tmp_path):
    x, edge_index = random_graph(120, 500, 300)
    x = x * (torch.rand(x.shape) < 0.02)
    qmodel = mq.quantize(PlanetoidGCN(300, 5, hidden=64).eval(), (x, edge_index))
    stored = {}
    for bits in (8, 2):
        mq.export(mq.freeze(qmodel, bits).eval(), (x, edge_index), tmp_path / str(bits), backend="torch")
        artifact = mq.load_artifact(tmp_path / str(bits))
        entries = json.loads((tmp_path / str(bits) / "manifest.json").read_text())["backend_entries"]
        assert (entries["packed_ops"] > 0) == (bits == 2)
        assert torch.equal(artifact(x, edge_index), mq.lower(mq.freeze(qmodel, bits).eval())(x, edge_index))
        program = torch.export.load(tmp_path / str(bits) / "features.pt2")
        stored[bits] = sum(t.numel() * t.element_size() for t in program.constants.values()) + sum(
            t.numel() * t.element_size() for t in program.state_dict.values()
        )
    assert stored[2] < 0.35 * stored[8], stored  # 300 x 64 weights: 19.2 kB int8 -> 4.8 kB packed


def test_the_self_check_also_runs_a_graph_whose_first_nodes_have_no_edges(frozen_gcn, tmp_path, monkeypatch):
    """A backend that is wrong only on rows that receive nothing passes on an example where every node has
    in-edges; the stressed copy of the example (first nodes cut off from every edge) catches it at export."""
    from mixq_compile import selfcheck

    _, frozen, _ = frozen_gcn
    x = torch.randn(64, 12)
    ring = torch.arange(64)
    edge_index = torch.cat([torch.stack([ring, (ring + 1) % 64]), torch.stack([ring, (ring + 5) % 64])], 1)
    stressed = selfcheck.stressed((x, edge_index), frozen.signature)
    assert stressed[0] is x and stressed[1].shape == edge_index.shape
    assert not torch.isin(stressed[1], torch.arange(2)).any(), "64 // 32 = 2 nodes without any edge"
    assert selfcheck.stressed((x,), mq.quantize(torch.nn.Linear(12, 4), (x,)).signature) is None, "no edges"

    backend = type(get_backend("torch"))
    load = backend.load

    def wrong_on_empty_rows(self, directory, entries):
        structure, features = load(self, directory, entries)

        def features_off_by_one(x, edge_index, *rest):
            out = features(x, edge_index, *rest)
            empty = ~torch.isin(torch.arange(x.shape[0]), edge_index[1])
            return tuple(o + empty[:, None].to(o.dtype) for o in out)

        return structure, features_off_by_one

    monkeypatch.setattr(backend, "load", wrong_on_empty_rows)
    with pytest.raises(mq.ArtifactError, match="does not compute what the integer program computes"):
        mq.export(frozen, (x, edge_index), tmp_path / "wrong", backend="torch")
    assert not (tmp_path / "wrong").exists()
    monkeypatch.undo()
    path = mq.export(frozen, (x, edge_index), tmp_path / "right", backend="torch")
    cases = selfcheck.load(path)
    assert len(cases) == 2 and torch.equal(cases[1][0][1], stressed[1])
    mq.load_artifact(path)  # both cases re-checked on this CPU


@pytest.mark.parametrize("backend", ["torch", "tvm"])
def test_program_files_do_not_store_the_example_graph(backend, tmp_path):
    """torch.export.save keeps a program's example inputs, i.e. the graph exported on (Cora: 16 MB in each .pt2
    beside 0.2 MB of weights); the programs are written without them and still run on new graphs."""
    usable, skipped = available_backends([backend])
    if not usable:
        pytest.skip(skipped[backend])
    x, edge_index = random_graph(2000, 8000, 500)  # 4 MB of features, 500 x 16 weights
    torch.manual_seed(0)
    model = PlanetoidGCN(500, 3, hidden=16).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = mq.freeze(mq.quantize(model, (x, edge_index)), 8).eval()
    path = mq.export(frozen, (x, edge_index), tmp_path / "a", backend=backend)
    programs = [f for f in path.iterdir() if f.suffix == ".pt2"]
    assert programs and all(f.stat().st_size < 400_000 for f in programs), {f.name: f.stat().st_size for f in programs}
    for program_file in programs:  # deflated: the serialized graph is most of a small program
        with zipfile.ZipFile(program_file) as archive:
            assert {entry.compress_type for entry in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    other = random_graph(300, 900, 500, seed=3)
    program = mq.lower(frozen)
    assert (mq.load_artifact(path)(*other) - program(*other)).abs().max() <= 1.001 * output_step(program)
