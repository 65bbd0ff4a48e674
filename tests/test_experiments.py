"""Experiments machinery: resumable sweeps, failure records, executors, summaries and --smoke runs end to end."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from unittest.mock import patch

import pytest

from experiments import ablation, explore_all
from experiments.harness import report_sections
from experiments.harness.runner import add_common_arguments
from experiments.harness.sweep import config_key, read_records, run_sweep
from mixq_compile.cli import build_parser, main

from helpers import data_root

pytestmark = pytest.mark.slow  # end-to-end experiment runs

CALLS: list[dict] = []


def square(config: dict) -> dict:
    """A module-level run function (picklable for worker processes)."""
    CALLS.append(config)
    if config.get("fail"):
        raise ValueError(f"bad config {config['x']}")
    return {"y": config["x"] ** 2}


def test_config_key_ignores_field_order():
    assert config_key({"a": 1, "b": [2, 3]}) == config_key({"b": [2, 3], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_resumed_sweep_skips_finished_runs(tmp_path):
    path = tmp_path / "runs.jsonl"
    CALLS.clear()
    first = run_sweep(square, [{"x": 1}, {"x": 2}], path)
    assert [r["result"]["y"] for r in first] == [1, 4] and len(CALLS) == 2
    CALLS.clear()
    again = run_sweep(square, [{"x": 1}, {"x": 2}, {"x": 3}], path)
    assert CALLS == [{"x": 3}]
    assert [r["result"]["y"] for r in again] == [1, 4, 9]
    assert len(read_records(path)) == 3


def test_failed_run_is_recorded_and_sweep_continues(tmp_path):
    path = tmp_path / "runs.jsonl"
    CALLS.clear()
    ok = run_sweep(square, [{"x": 1, "fail": True}, {"x": 2}], path)
    assert [r["config"]["x"] for r in ok] == [2]
    failed = [r for r in read_records(path) if r["status"] == "error"]
    assert len(failed) == 1 and "ValueError: bad config 1" in failed[0]["error"]
    assert failed[0]["wall_s"] >= 0 and "Traceback" in failed[0]["error"]
    CALLS.clear()
    run_sweep(square, [{"x": 1, "fail": True}, {"x": 2}], path)
    assert CALLS == [{"x": 1, "fail": True}]  # the failure is retried, the finished run is not


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "runs.jsonl"
    run_sweep(square, [{"x": 5}], path)
    with path.open("a") as f:
        f.write('{"key": "trunc')
    CALLS.clear()
    assert run_sweep(square, [{"x": 5}], path)[0]["result"] == {"y": 25} and CALLS == []


def test_process_pool_executor(tmp_path):
    records = run_sweep(square, [{"x": i} for i in range(4)], tmp_path / "runs.jsonl", workers=2)
    assert sorted(r["result"]["y"] for r in records) == [0, 1, 4, 9]
    assert all(r["cpu_s"] >= 0 for r in records)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed")
def test_ray_executor_without_ray_says_how_to_install(tmp_path):
    with pytest.raises(RuntimeError, match=r"mixq-compile\[ray\]"):
        run_sweep(square, [{"x": 1}], tmp_path / "runs.jsonl", executor="ray")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray not installed (extra [ray])")
def test_ray_executor_runs_every_config_and_records_failures(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    import ray

    # Ray's workers import ``square`` by module name: let them find this test module.
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    path = tmp_path / "runs.jsonl"
    real_get = ray.get

    def get_or_crash(ref):  # a worker that dies (e.g. killed for memory) surfaces as a RayError in ray.get
        record = real_get(ref)
        if record["config"].get("crash"):
            raise ray.exceptions.WorkerCrashedError()
        return record

    monkeypatch.setattr(ray, "get", get_or_crash)
    try:
        configs = [{"x": 1, "fail": True}, {"x": 2}, {"x": 3}, {"x": 4, "crash": True}]
        records = run_sweep(square, configs, path, executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert sorted(r["result"]["y"] for r in records) == [4, 9]
    failed = {r["config"]["x"]: r["error"] for r in read_records(path) if r["status"] == "error"}
    assert set(failed) == {1, 4} and "bad config 1" in failed[1] and "WorkerCrashedError" in failed[4]


def test_pareto_front_keeps_strict_improvements():
    points = [(2.0, 40.0), (2.0, 45.0), (3.0, 44.0), (4.0, 80.0), (5.0, 79.0), (6.0, 81.0)]
    assert explore_all.pareto_front(points) == [(2.0, 45.0), (4.0, 80.0), (6.0, 81.0)]


def test_ablation_grid_is_the_papers_40_values():
    grid = ablation.paper_grid()
    assert len(grid) == 40 and len(set(grid)) == 40
    assert {-0.1, -0.01, 0.0, 0.05, 0.1} <= set(grid)


def test_explore_all_sample_keeps_uniform_assignments():
    chosen = explore_all.assignments(5, seed=0)
    assert chosen[:3] == [(8,) * 9, (4,) * 9, (2,) * 9] and len(set(chosen)) == 8
    assert len(explore_all.assignments(None, 0)) == 3**9


def test_ogbn_arxiv_without_ogb_exits_cleanly(tmp_path, capsys):
    if importlib.util.find_spec("ogb") is not None:
        pytest.skip("ogb is installed")
    assert main(["experiment", "ogbn_arxiv", "--smoke", "--out", str(tmp_path)]) == 0
    assert "skipped:" in capsys.readouterr().out


def _summary(out) -> list[dict]:
    with (out / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(data_root() is None, reason="shared data sets (MIXQ_DATA) not available")
def test_planetoid_smoke_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "planetoid"
    argv = ["experiment", "planetoid", "--smoke", "--data-root", str(data_root()), "--out", str(out)]
    assert main(argv) == 0
    rows = _summary(out)
    required = {"dataset", "lambda", "setting", "runs", "acc_mean", "acc_std", "avg_bits", "gbitops_paper",
                "gbitops_wa", "fp32_acc_mean", "wall_s"}  # fmt: skip
    assert required <= set(rows[0]) and len(rows) == 1
    row = rows[0]
    assert row["dataset"] == "Cora" and row["setting"] == "mixq" and row["runs"] == "1"
    assert 0 <= float(row["acc_mean"]) <= 100 and 0 <= float(row["fp32_acc_mean"]) <= 100
    assert 2 <= float(row["avg_bits"]) <= 8
    assert 0 < float(row["gbitops_paper"]) < float(row["fp32_gbitops_paper"])
    assert float(row["gbitops_paper_max"]) == float(row["gbitops_paper"]), "one run: its cost is the maximum"
    assert 0 < float(row["gbitops_wa"]) < float(row["fp32_gbitops_wa"])
    config = json.loads((out / "invocations.jsonl").read_text().splitlines()[0])
    assert config["configs"][0]["seed"] == 0 and config["configs"][0]["dataset"] == "Cora"
    assert (out / "acc_vs_gbitops_Cora.png").stat().st_size > 0
    assert main(argv) == 0  # resumed: nothing re-run
    assert "1 of 1 runs already finished" in capsys.readouterr().out
    assert len(read_records(out / "runs.jsonl")) == 1
    text = report_sections.render(tmp_path)
    assert "Table 1" in text and "| Cora | mixq |" in text and "81.58 ± 0.75" in text


@pytest.mark.skipif(data_root() is None, reason="shared data sets (MIXQ_DATA) not available")
@pytest.mark.parametrize("setting", ["mixq", "mixq_ft"])
def test_tudataset_smoke_end_to_end(tmp_path, setting):
    out = tmp_path / "tudataset"
    args = ["experiment", "tudataset", "--smoke", "--settings", setting, "--data-root", str(data_root())]
    assert main(args + ["--out", str(out)]) == 0
    (row,) = _summary(out)
    assert row["dataset"] == "IMDB-BINARY" and row["setting"] == setting and row["epochs"] == "2"
    assert 0 <= float(row["acc_mean"]) <= 100 and 4 <= float(row["avg_bits"]) <= 8
    (record,) = read_records(out / "runs.jsonl")
    assert record["status"] == "ok" and set(record["result"]["bits"]) <= {4, 8}
    assert record["config"]["range_init"] == "minmax"
    assert record["config"].get("qat_range_init") == ("mse" if setting == "mixq_ft" else None)
    text = report_sections.render(tmp_path)  # beside every published column: FP32, MixQ, DQ INT8/INT4, A²Q
    assert f"({setting}, 2 ep., 1 folds, " in text
    assert "| 71.10 ± 3.96 | 68.60 ± 6.98 | 74.60 ± 3.40 (4.48 bits) |" in text


def test_planetoid_summary_reports_the_costliest_run():
    from experiments import planetoid

    def record(seed, gbitops):
        config = {"dataset": "Cora", "setting": "budget_paper_fit", "lambda": 1.0, "budget": 1.676e9, "seed": seed}
        result = {"acc": 80.0, "fp32_acc": 82.0, "avg_bits": 5.0, "gbitops_paper": gbitops, "gbitops_wa": 4.0}
        return {"config": config, "result": result, "wall_s": 1.0, "cpu_s": 1.0}

    (row,) = planetoid.summarize([record(0, 1.2), record(1, 1.6), record(2, 1.4)])
    assert row["runs"] == 3 and row["gbitops_paper"] == pytest.approx(1.4) and row["gbitops_paper_max"] == 1.6


def test_tudataset_summary_keeps_fine_tuning_with_min_max_ranges_apart():
    from experiments import tudataset

    def record(qat_range_init, acc):
        config = {"dataset": "IMDB-BINARY", "setting": "mixq_ft", "lambda": -1e-8, "epochs": 200}
        config |= {"qat_range_init": qat_range_init} if qat_range_init else {}
        result = {"acc": acc, "avg_bits": 8.0, "gbitops_paper": 1.0, "gbitops_wa": 7.0}
        return {"config": config, "result": result, "wall_s": 1.0, "cpu_s": 1.0}

    rows = tudataset.summarize([record(None, 50.0), record("mse", 70.0), record("mse", 80.0)])
    assert [(r["setting"], r["runs"], r["acc_mean"]) for r in rows] == [
        ("mixq_ft_minmax", 1, 50.0),
        ("mixq_ft", 2, 75.0),
    ]


def test_planetoid_budget_paper_configs_search_under_the_published_cost():
    from experiments import planetoid

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    planetoid.add_arguments(parser)
    args = parser.parse_args(["--datasets", "Cora", "--settings", "budget_paper", "--runs", "2"])
    with patch.object(planetoid, "_available", lambda names: names):
        configs = planetoid.configs(args)
    assert [(c["lambda"], c["seed"]) for c in configs] == [(lam, s) for lam in planetoid.PAPER_LAMBDAS for s in (0, 1)]
    for config in configs:
        published = planetoid.PUBLISHED[("Cora", config["lambda"])]
        assert config["budget"] == pytest.approx(published[3] * 1e9) and config["budget_convention"] == "paper"
        assert config["penalty_weight"] == 1.0, "the hinge's weight, not the label λ, scales the penalty"
    args.fit_budget = True
    with patch.object(planetoid, "_available", lambda names: names):
        fitted = planetoid.configs(args)
    assert {c["setting"] for c in fitted} == {"budget_paper_fit"} and all(c["fit_budget"] for c in fitted)


def test_planetoid_summary_and_plots_for_several_data_sets(tmp_path):
    from experiments import planetoid

    def record(dataset, lam, seed, acc):
        config = {"dataset": dataset, "setting": "mixq", "lambda": lam, "budget": None, "seed": seed}
        result = {"acc": acc, "fp32_acc": 82.0, "avg_bits": 6.0, "gbitops_paper": 3.0, "gbitops_wa": 9.0,
                  "fp32_gbitops_paper": 16.1, "fp32_gbitops_wa": 513.0}  # fmt: skip
        return {"key": f"{dataset}{lam}{seed}", "config": config, "result": result, "wall_s": 1.0, "cpu_s": 0.5}

    records = [record(ds, lam, s, 80.0 + s) for ds in ("Cora", "CiteSeer") for lam in (0.1, 1.0) for s in (0, 1)]
    rows = planetoid.summarize(records)
    assert len(rows) == 4 and all(r["runs"] == 2 for r in rows)
    cora = next(r for r in rows if r["dataset"] == "Cora" and r["lambda"] == 0.1)
    assert cora["acc_mean"] == 80.5 and cora["acc_std"] == 0.5 and cora["cpu_s"] == 1.0
    assert cora["paper_acc"] == 77.72  # the paper's published Cora λ=0.1 accuracy
    planetoid.plot(rows, records, tmp_path)
    assert {p.name for p in tmp_path.glob("*.png")} == {"acc_vs_gbitops_Cora.png", "acc_vs_gbitops_CiteSeer.png"}


@pytest.mark.skipif(data_root() is None, reason="shared data sets (MIXQ_DATA) not available")
def test_planetoid_dq_smoke_runs_with_degree_quant(tmp_path):
    assert main(["experiment", "planetoid_dq", "--smoke", "--out", str(tmp_path)]) == 0
    rows = _summary(tmp_path)
    assert [r["setting"] for r in rows] == ["mixq_dq"]
    record = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[0])
    assert record["config"]["degree_quant"] is True and record["error"] is None
    assert 0.0 <= float(rows[0]["acc_mean"]) <= 100.0


def test_negative_lambdas_in_scientific_notation_parse_as_values():
    """``--lambdas -1e-8`` (the paper's λ) was rejected by argparse as an unknown option."""
    args = build_parser().parse_args(
        ["experiment", "tudataset", "--lambdas", "-1e-8", "0.125", "-2E+3", "--epochs", "3"]
    )
    assert args.lambdas == [-1e-8, 0.125, -2000.0] and args.epochs == 3
    assert build_parser().parse_args(["demo", "--lam", "-1E-3"]).lam == -1e-3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "tudataset", "--lambdas", "-x"])


def test_scale_smoke_writes_every_phase_with_time_memory_and_accuracy(tmp_path):
    assert main(["experiment", "scale", "--smoke", "--out", str(tmp_path)]) == 0
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["fp32", "search", "qat", "inference"]
    for row in rows:
        assert int(row["nodes"]) == 10_000 and int(row["edges"]) == 100_000 and row["model"] == "sage"
        assert float(row["epoch_s"]) > 0 and float(row["peak_rss_gib"]) > 0 and 0 <= float(row["acc"]) <= 100
        assert row["cpu"]
    inference = rows[-1]
    assert float(inference["eager_s"]) > 0 and float(inference["speedup_vs_eager"]) > 0
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_recorded_arguments_name_no_machine_folders(tmp_path, monkeypatch):
    """invocations.jsonl / timing.jsonl are committed: paths in them are relative to the checkout, and an absolute
    path outside it keeps only its last component."""
    from pathlib import Path

    from experiments import CHECKOUT
    from experiments.harness.runner import _portable

    monkeypatch.chdir(tmp_path)  # relative to the checkout, wherever the command runs
    assert _portable(CHECKOUT / "results" / "scale") == "results/scale"
    assert _portable(tmp_path / "results" / "scale") == "<outside the checkout>/scale"
    assert _portable("/somewhere/else/scale_full") == "<outside the checkout>/scale_full"
    assert _portable(Path("results/x")) == "results/x"
    assert _portable("Cora") == "Cora" and _portable(3) == 3 and _portable(None) is None


@pytest.mark.skipif(data_root() is None, reason="shared data sets (MIXQ_DATA) not available")
def test_demo_seeds_smoke_records_the_gap_per_run_and_resumes(tmp_path, capsys):
    from experiments import demo_seeds

    argv = ["--smoke", "--data-root", str(data_root()), "--out", str(tmp_path)]
    demo_seeds.main(argv)
    with (tmp_path / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["threads"], r["seed"]) for r in rows] == [("1", "0"), ("1", "1")]
    for r in rows:
        assert float(r["gap"]) == pytest.approx(float(r["fp32_test"]) - float(r["qat_test"]), abs=0.011)
        assert 2 <= float(r["avg_bits"]) <= 8 and r["cpu"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["by_threads"]["1"]["worst_gap"] == max(float(r["gap"]) for r in rows)
    assert summary["cpu"]["model"] and (tmp_path / "gaps.png").stat().st_size > 0
    capsys.readouterr()
    demo_seeds.main(argv)  # finished runs are kept, not repeated
    assert "[1/6]" not in capsys.readouterr().out
