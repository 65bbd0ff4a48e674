"""``mixq-compile quantize | export | profile | inspect`` on a user's own model file, end to end (smoke sizes)."""

from __future__ import annotations

import json
import textwrap

import pytest

import mixq_compile as mq
from mixq_compile import workflow
from mixq_compile.cli import main

from helpers import data_root

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch_geometric.nn import GraphConv, SAGEConv, global_add_pool


    class Sage(nn.Module):
        def __init__(self, in_channels, out_channels, hidden=16):
            super().__init__()
            self.conv1, self.conv2 = SAGEConv(in_channels, hidden), SAGEConv(hidden, out_channels)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


    class Readout(nn.Module):
        def __init__(self, in_channels, out_channels, hidden=16):
            super().__init__()
            self.conv = GraphConv(in_channels, hidden)
            self.head = nn.Linear(hidden, out_channels)

        def forward(self, x, edge_index, batch):
            return self.head(global_add_pool(self.conv(x, edge_index).relu(), batch))
    """
)

pytestmark = pytest.mark.skipif(data_root() is None, reason="needs MIXQ_DATA with Cora and MUTAG raw files")


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


SMOKE = ["--fp32-epochs", "3", "--epochs", "2", "--qat-epochs", "1"]


@pytest.mark.slow
def test_quantize_export_profile_inspect_a_node_classifier(models, capsys):
    root = str(data_root())
    assert main(["quantize", "user_models:Sage", "--dataset", "cora", "--data-root", root, "--out", "sage",
                 "--json", "summary.json", *SMOKE]) == 0  # fmt: skip
    summary = json.loads((models / "summary.json").read_text())
    assert summary["dataset"] == "Cora" and 0 <= summary["mixq_test_acc"] <= 100 and summary["avg_bits"] <= 8
    assert set(summary["bits"].values()) <= {2, 4, 8}
    assert not (models / ".sage.partial").exists(), "checkpoints are removed once the model is saved"
    meta = json.loads((models / "sage" / "mixq.json").read_text())
    assert meta["metadata"]["factory"] == "user_models:Sage" and meta["metadata"]["factory_path"] == str(models)
    assert meta["metadata"]["factory_kwargs"] == {"in_channels": 1433, "out_channels": 7}
    for backend in ("torch", "onnx"):
        assert main(["export", "sage", "--backend", backend, "--out", f"art_{backend}", "--data-root", root]) == 0
    assert main(["export", "sage", "--backend", "onnx", "--out", "art_onnx", "--data-root", root]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["profile", "art_onnx", "--data-root", root, "--repeats", "3", "--warmup", "1",
                 "--json", "profile.json"]) == 0  # fmt: skip
    report = json.loads((models / "profile.json").read_text())
    assert report["backend"] == "onnx" and report["median_ms"] > 0 and report["dataset"] == "Cora"
    assert report["test_acc"] == pytest.approx(summary["mixq_test_acc"], abs=0.5)
    capsys.readouterr()
    assert main(["inspect", "sage", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "saved model" and info["bits"] == summary["bits"]
    assert main(["inspect", "art_torch"]) == 0
    out = capsys.readouterr().out
    assert "sha256 verified" in out and "conv1" in out


def test_a_graph_classifier_from_a_file_with_a_budget(models, tmp_path):
    root = str(data_root())
    assert main(["quantize", f"{models / 'user_models.py'}:Readout", "--dataset", "MUTAG", "--data-root", root,
                 "--out", "readout", "--budget", "0.3", *SMOKE]) == 0  # fmt: skip
    frozen = mq.load(models / "readout")  # the recorded factory is found again
    assert frozen.signature.names == ["x", "edge_index", "batch"]
    assert main(["export", "readout", "--backend", "torch", "--out", "art", "--data-root", root]) == 0


def test_a_killed_run_resumes_after_its_last_finished_phase(models, monkeypatch, capsys):
    root = str(data_root())
    argv = ["quantize", "user_models:Sage", "--dataset", "Cora", "--data-root", root, "--out", "sage", *SMOKE]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "freeze_searched", killed)  # killed between the search and QAT
    assert main(argv) == 130
    assert (models / ".sage.partial" / "fp32.pt").is_file() and (models / ".sage.partial" / "search").is_dir()
    monkeypatch.undo()
    monkeypatch.chdir(models)
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FP32 weights: resumed" in out and "MixQ search: resumed" in out
    assert (models / "sage" / "mixq.json").is_file()


def test_experiment_outside_a_checkout_names_the_fix(monkeypatch, capsys):
    from mixq_compile import cli

    monkeypatch.setattr(cli, "_experiments_package", lambda: None)
    assert cli.main(["experiment", "planetoid", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert "experiments/ folder of a checkout" in err and "Traceback" not in err
