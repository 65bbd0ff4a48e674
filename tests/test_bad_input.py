"""Bad and edge inputs through the API, the artifacts and the CLI: each gives a clear error naming the problem and
the fix, or a documented behaviour (docs/bad_input.md keeps the table of cases)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv

import mixq_compile as mq
from mixq_compile.cli import main
from mixq_compile.factory import FactoryError, build
from mixq_compile.runtimes import available_backends

from helpers import random_graph

BACKENDS = [name for _, name, _ in available_backends(["torch", "onnx", "tvm"])[0]]


class GCN(nn.Module):
    def __init__(self, in_channels: int = 16, out_channels: int = 4) -> None:
        super().__init__()
        self.conv1, self.conv2 = GCNConv(in_channels, 32), GCNConv(32, out_channels)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


class SizeBranch(nn.Module):
    """A Python branch on the number of nodes: torch.export specialises it into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 40:
            return self.lin(x)
        return torch.zeros(x.shape[0], 4)


def quiet_quantize(model, args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, args, **kwargs)


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return random_graph(50, 200, 16)


@pytest.fixture(scope="module")
def frozen(graph):
    return mq.freeze(quiet_quantize(GCN().eval(), graph), bits=8).eval()


@pytest.fixture(scope="module")
def runners(frozen, graph, tmp_path_factory):
    """The frozen model and an artifact of every backend available here: they must all answer alike."""
    root = tmp_path_factory.mktemp("bad")
    found = {"frozen": frozen, "program": mq.lower(frozen)}
    for name in BACKENDS:
        found[name] = mq.load_artifact(mq.export(frozen, graph, root / name, backend=name))
    return found


RUNNERS = ["frozen", "program", *BACKENDS]


# ---- capture and quantize ----------------------------------------------------------------------------------


def test_quantizing_a_quantized_model_names_the_fix(frozen, graph):
    with pytest.raises(TypeError, match=r"already quantized.*freeze"):
        mq.quantize(frozen, graph)


def test_a_float_edge_index_names_the_fix(graph):
    x, edge_index = graph
    with pytest.raises(TypeError, match=r"edge_index.*edge_index\.long\(\)"):
        mq.quantize(GCN(), (x, edge_index.float()))

    class Renamed(GCN):
        def forward(self, x, ei):
            return super().forward(x, ei)

    with pytest.raises(mq.CaptureError, match=r"example_inputs\[1\].*\.long\(\)"):
        mq.quantize(Renamed(), (x, edge_index.float()))


@pytest.mark.parametrize(
    "inputs, error, match",
    [
        ((), TypeError, "non-empty tuple"),
        ([np.zeros((3, 16))], TypeError, "only tensors"),
        ((torch.full((5, 16), float("nan")), torch.zeros(2, 3, dtype=torch.long)), ValueError, "NaN"),
    ],
)
def test_bad_example_inputs_are_refused(inputs, error, match):
    with pytest.raises(error, match=match):
        mq.quantize(GCN(), inputs)


def test_a_model_that_is_not_a_module_is_refused(graph):
    with pytest.raises(TypeError, match=r"torch.nn.Module"):
        mq.quantize(lambda x, e: x, graph)


def test_freeze_takes_one_width_for_every_site_and_refuses_bad_ones(graph):
    qmodel = quiet_quantize(GCN().eval(), graph)
    assert set(mq.freeze(qmodel, bits=4).chosen_bits().values()) == {4}
    with pytest.raises(ValueError, match="bit"):
        mq.freeze(qmodel, bits=0)
    with pytest.raises(ValueError, match="unknown sites"):
        mq.freeze(qmodel, bits={"no.such.site": 8})


# ---- the signature at every boundary ------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_node_ids_out_of_range_are_refused_alike_everywhere(runners, graph, runner):
    x, edge_index = graph
    negative, too_big = edge_index.clone(), edge_index.clone()
    negative[0, 3], too_big[1, 7] = -1, x.shape[0]
    with pytest.raises(mq.InputValueError, match="negative node id"):
        runners[runner](x, negative)
    with pytest.raises(mq.InputValueError, match=r"node id 50.*only 50 rows"):
        runners[runner](x, too_big)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("density", [1.0, 0.02])
def test_non_finite_features_are_refused_alike_everywhere(runners, graph, runner, bad, density):
    """Dense and sparse features: the torch artifact leaves the test to its fused input layer, whose native kernel
    finds NaN/Inf while it scans the non-zeros (sparse) and whose dense path tests x first; the ONNX graph returns
    row sums of x that onnxruntime computes in its own threads."""
    x, edge_index = graph
    dirty = x * (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < density)
    dirty[4, 2] = bad
    if runner in ("torch", "onnx"):
        assert runners[runner].finite_checked_later == {"x"}
    with pytest.raises(mq.InputValueError, match=r"NaN or infinite.*nan_to_num"):
        runners[runner](dirty, edge_index)


@pytest.mark.parametrize("runner", RUNNERS)
def test_huge_finite_features_whose_sums_overflow_are_accepted(runners, graph, runner):
    """The NaN/Inf tests by sum (the signature's, the ONNX graph's row sums) see an infinite sum when finite
    features overflow it; the exact test then accepts them, and every runner answers as the program does."""
    x, edge_index = graph
    huge = x.clone()
    huge[3] = 3e38
    expected = runners["program"](huge, edge_index)
    # artifacts compute the program's integers; the fake-quant model sums the same values in float
    exact = runner != "frozen"
    torch.testing.assert_close(runners[runner](huge, edge_index), expected, **({"rtol": 0, "atol": 0} if exact else {}))


class Skip(nn.Module):
    """The features feed the first linear layer and also, unquantized-linear, the output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + x[:, :4]


def test_features_read_beyond_the_fused_input_layer_keep_the_signature_test(graph, tmp_path):
    frozen = mq.freeze(quiet_quantize(Skip().eval(), graph), bits=8).eval()
    artifact = mq.load_artifact(mq.export(frozen, graph, tmp_path / "skip", backend="torch"))
    assert artifact.finite_checked_later == frozenset()
    x, edge_index = graph
    dirty = x.clone()
    dirty[7, 1] = float("nan")  # a column only the skip path reads after the signature check
    with pytest.raises(mq.InputValueError, match=r"input 'x' contains NaN or infinite.*nan_to_num"):
        artifact(dirty, edge_index)


@pytest.mark.parametrize("runner", RUNNERS)
def test_empty_graphs_work_and_agree_with_the_frozen_model(runners, graph, runner):
    x, _ = graph
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    assert runners[runner](torch.randn(0, 16), no_edges).shape == (0, 4)
    want = runners["program"](x, no_edges)
    assert torch.equal(runners[runner](x, no_edges), want) or runner == "frozen"


@pytest.mark.parametrize("runner", RUNNERS)
def test_signature_mismatches_name_the_input(runners, graph, runner):
    x, edge_index = graph
    cases = [
        ((x,), "takes 2 inputs"),
        ((x.double(), edge_index), "dtype"),
        ((x[0], edge_index), "rank"),
        ((x[:, :8], edge_index), "dim 1"),
        ((x.numpy(), edge_index), "must be a torch.Tensor"),
    ]
    for args, match in cases:
        with pytest.raises(mq.InputSignatureError, match=match):
            runners[runner](*args)


def test_a_size_branch_taken_at_capture_is_enforced(graph, tmp_path):
    x, edge_index = graph
    frozen = mq.freeze(quiet_quantize(SizeBranch().eval(), (x, edge_index)), bits=8).eval()
    small_x, small_edges = random_graph(30, 60, 16, seed=3)
    assert SizeBranch()(small_x, small_edges).abs().max() == 0  # eager takes the other branch
    artifact = mq.load_artifact(mq.export(frozen, (x, edge_index), tmp_path / "branch", backend="torch"))
    for runner in (frozen, mq.lower(frozen), artifact):
        with pytest.raises(mq.InputSignatureError, match=r"shape condition `x\.size\(0\) > 40`.*Capture the model"):
            runner(small_x, small_edges)
        assert runner(*random_graph(45, 90, 16, seed=4)).shape == (45, 4)  # inside the guard: fine
    assert "x.size(0) > 40" in artifact.manifest["guards"]


# ---- the structure cache never serves a stale graph --------------------------------------------------------


@pytest.mark.parametrize("runner", BACKENDS)
def test_the_structure_cache_follows_every_way_a_graph_can_change(runners, graph, runner):
    x, edge_index = graph
    artifact, program = runners[runner], runners["program"]
    cache = artifact.structure_cache
    assert cache is not None, "load_artifact caches structure by default"

    def check(x, edges) -> None:
        assert torch.equal(artifact(x, edges), program(x, edges))

    edges = edge_index.clone()
    check(x, edges)
    misses = cache.misses
    check(x, edges.clone())  # an equal graph in a new tensor: a hit
    assert cache.misses == misses
    edges[0, :20] = edges[1, :20]  # in place
    check(x, edges)
    edges.data[1, :5] = 0  # through .data: no version-counter bump
    check(x, edges)
    edges.numpy()[0, 10:15] = 3  # through a NumPy view
    check(x, edges)
    edges.view(-1)[:3] = 9  # through a view
    check(x, edges)
    check(x, torch.randint(0, 50, (2, 200)))  # a new graph of the same shape
    smaller_x, smaller = random_graph(30, 100, 16, seed=5)
    check(smaller_x, smaller)  # another size
    with torch.inference_mode():
        check(x, edge_index)  # inference tensors are cached too
        check(x, edge_index)


# ---- artifacts on disk ---------------------------------------------------------------------------------------


def test_export_never_deletes_files_and_replaces_an_artifact_only_when_asked(frozen, graph, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "important.txt").write_text("keep me")
    with pytest.raises(mq.ArtifactError, match=r"not a mixq_compile artifact.*nothing there was touched"):
        mq.export(frozen, graph, mine, backend="torch")
    assert (mine / "important.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("data")
    with pytest.raises(mq.ArtifactError, match="not a mixq_compile artifact"):
        mq.export(frozen, graph, a_file, backend="torch")
    path = mq.export(frozen, graph, tmp_path / "art", backend="torch")
    stamp = (path / "manifest.json").read_text()
    with pytest.raises(mq.ArtifactError, match="overwrite=True"):
        mq.export(frozen, graph, path, backend="torch")
    assert (path / "manifest.json").read_text() == stamp
    mq.export(frozen, graph, path, backend="torch", overwrite=True)
    assert mq.load_artifact(path)(*graph).shape == (50, 4)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["site_bits"].update({next(iter(m["site_bits"])): 2}),
        lambda m: m.update(backend="onnx"),
        lambda m: m.update(guards=[*m["guards"], "x.size(0) > 0"]),
        lambda m: m["files"].update({"features.pt2": "0" * 64}),
    ],
    ids=["site-bits", "backend", "guards", "checksum"],
)
def test_a_manifest_edited_by_hand_is_refused(frozen, graph, tmp_path, edit):
    path = mq.export(frozen, graph, tmp_path / "art", backend="torch")
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mq.ArtifactError, match="modified after export"):
        mq.load_artifact(path)


def test_an_artifact_of_an_older_format_asks_for_a_new_export(frozen, graph, tmp_path):
    path = mq.export(frozen, graph, tmp_path / "art", backend="torch")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mq.ArtifactError, match=r"format version 1.*export it again"):
        mq.load_artifact(path)


# ---- saved models and factories ------------------------------------------------------------------------------


def test_save_never_deletes_files_and_load_needs_a_model_or_a_recorded_factory(frozen, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(mq.SavedModelError, match="not a saved mixq_compile model"):
        mq.save(frozen, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    saved = mq.save(frozen, tmp_path / "saved")
    mq.save(frozen, saved)  # an earlier save is replaced (checkpoints)
    with pytest.raises(mq.SavedModelError, match="overwrite=True"):
        mq.save(frozen, saved, overwrite=False)
    with pytest.raises(mq.SavedModelError, match="pass the model"):
        mq.load(saved)
    with pytest.raises(mq.SavedModelError, match="not a saved mixq_compile model"):
        mq.load(mine, GCN())


def test_load_rebuilds_from_a_recorded_factory(frozen, graph, tmp_path):
    saved = mq.save(frozen, tmp_path / "saved", metadata={"factory": "test_bad_input:GCN", "factory_kwargs": {}})
    again = mq.load(saved).eval()
    assert torch.equal(again(*graph), frozen(*graph))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_colon", "MODULE:FUNCTION"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("test_bad_input:no_such_factory", "no callable"),
        ("test_bad_input:failing_factory", "failed when called.*in_channels"),
        ("test_bad_input:not_a_module", "not a torch.nn.Module"),
        ("/nowhere/models.py:f", "does not exist"),
    ],
)
def test_model_factory_errors_name_the_problem(spec, match):
    with pytest.raises(FactoryError, match=match):
        build(spec, {"in_channels": 16, "out_channels": 4})


def failing_factory(in_channels: int, out_channels: int, hidden: int) -> nn.Module:
    return GCN(in_channels, out_channels)


def not_a_module(in_channels: int, out_channels: int) -> str:
    return "model"


# ---- the command line ----------------------------------------------------------------------------------------


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and mq.__version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["demo", "--backends", "tensorrt"], "unknown backend 'tensorrt'"),
        (["demo", "--lam", "nan"], "finite"),
        (["demo", "--epochs", "0"], "positive"),
        (["demo", "--epochs", "-5"], "positive"),
        (["demo", "--bits", "0"], "bit"),
        (["demo", "--bits", "17"], "bit"),
        (["quantize", "m:f", "--dataset", "Cora", "--out", "o", "--lam", "1", "--budget", "0.5"], "not allowed"),
        (["quantize", "m:f", "--dataset", "Cora", "--out", "o", "--qat-epochs", "-1"], "0 or more"),
        (["export", "x", "--backend", "onnx:fast", "--out", "y"], "unknown backend"),
    ],
)
def test_cli_refuses_bad_arguments_before_any_work(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and match in capsys.readouterr().err


def test_cli_errors_are_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["quantize", "no_such_module_xyz:f", "--dataset", "Cora", "--out", "o"], None),
        (["quantize", "m:f", "--dataset", "NoSuchData", "--out", "o"], "unknown data set"),
        (["export", str(tmp_path / "missing"), "--out", "a"], "not a saved mixq_compile model"),
        (["profile", str(tmp_path)], "not a mixq_compile artifact"),
        (["inspect", str(tmp_path)], "not a saved mixq_compile model"),
    ]
    for argv, match in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("mixq-compile: error:") and "Traceback" not in err
        assert match is None or match in err
    assert main(["--debug", "inspect", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_experiment_help_gives_whole_sentences():
    from experiments import EXPERIMENTS, get
    from mixq_compile.cli import _first_sentence

    for name in EXPERIMENTS:
        summary = _first_sentence(get(name).__doc__)
        assert summary.endswith(".") and len(summary) > 30, (name, summary)


def test_a_corrupt_copy_is_refused_by_inspect(frozen, graph, tmp_path, capsys):
    path = mq.export(frozen, graph, tmp_path / "art", backend="torch")
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / "features.pt2").write_bytes(b"broken")
    assert main(["inspect", str(copy)]) == 2
    assert "does not match its checksum" in capsys.readouterr().err
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "artifact" and info["backend"] == "torch" and set(info["site_bits"].values()) == {8}
