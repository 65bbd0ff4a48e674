"""Smoke runs of the deployment benchmarks: they finish, write their CSV/JSON/PNG and report sane numbers."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

pytestmark = pytest.mark.slow  # end-to-end experiment runs


def _script(name: str):
    """The benchmark module ``experiments/<name>.py`` of this checkout."""
    return importlib.import_module(f"experiments.{name}")


def test_profile_bitops_smoke_writes_latency_table_ratios_and_plot(tmp_path):
    assert (
        _script("profile_bitops").main(["--smoke", "--backends", "torch", "nope", "tvm:fast", "--out", str(tmp_path)])
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "latency.csv").open()))
    assert {r["backend"] for r in rows} == {"eager", "torch"}
    integer = [r for r in rows if r["precision"] == "integer"]
    assert {r["config"] for r in integer} == {"all8", "w2_mp4", "all2"}
    assert all(float(r["median_ms"]) > 0 for r in rows)
    all8 = next(r for r in integer if r["config"] == "all8")
    mixed = next(r for r in integer if r["config"] == "w2_mp4")
    assert float(mixed["gbitops_wa"]) < float(all8["gbitops_wa"])
    all2 = next(r for r in integer if r["config"] == "all2")
    assert int(all2["program_bytes"]) < int(all8["program_bytes"]) < int(all8["artifact_bytes"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["program_bytes_all2_over_all8"]["torch"] < 1
    assert summary["skipped_backends"]["nope"] == "not built into this mixq_compile"
    assert "takes the options" in summary["skipped_backends"]["tvm:fast"]
    assert summary["ratios"]["torch"]["eager_over_int8"] > 0
    eager = [r["config"] for r in rows if r["backend"] == "eager"]
    assert eager == ["fp32", "fp32_cached", "fp32_end", "fp32_cached_end"], "baselines timed first and last"
    fastest = min(float(r["median_ms"]) for r in rows if r["backend"] == "eager" and r["cached"] == "False")
    assert summary["eager_ms"] == fastest
    assert (tmp_path / "latency_vs_bitops.png").stat().st_size > 1000


def test_profile_bitops_skips_onnx_where_its_prefix_sums_cannot_fit():
    """The large graph's ONNX aggregation holds int32 [E, hidden] tensors (it was OOM-killed): skipped with the
    estimate where they cannot fit, kept where they can."""
    import argparse

    script = _script("profile_bitops")
    args = argparse.Namespace(backends=["torch", "onnx"], hidden=256)
    kept, skipped = script.runnable_backends(args, edges=1_000)
    assert [b[0] for b in kept] == ["torch", "onnx"] and "onnx" not in skipped
    kept, skipped = script.runnable_backends(args, edges=10**12)
    assert [b[0] for b in kept] == ["torch"] and "GiB" in skipped["onnx"]


def test_profile_bitops_large_graph_smoke_adds_kernel_timings(tmp_path):
    assert (
        _script("profile_bitops").main(["--smoke", "--graph", "large", "--backends", "torch", "--out", str(tmp_path)])
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"].startswith("planted 3k nodes") and summary["hidden"] == 256
    assert [k["bits"] for k in summary["kernels"]] == [8, 4, 2] and all(k["median_ms"] > 0 for k in summary["kernels"])
    assert summary["all8_over_all2"]["torch"] > 0
    kernels = list(csv.DictReader((tmp_path / "kernels.csv").open()))
    assert [int(r["table_bytes_per_row"]) for r in kernels] == [256, 128, 64]
    from mixq_compile import cpu

    assert kernels[0]["cpu"] == cpu.summary(), "the CPU the figures came from"


def test_kernel_rows_time_tvm_csr_kernels_beside_torch_ones():
    """With TVM, the large graph's kernel table adds TVM's int8 and narrow CSR kernels, each width's speed-up
    taken against its own backend's int8 kernel."""
    pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install 'mixq_compile[tvm]'")
    edge_index = torch.randint(0, 300, (2, 2000), generator=torch.Generator().manual_seed(0))
    rows = _script("profile_bitops").kernel_rows(edge_index, 48, 2, tvm=True)
    assert sorted((r["backend"], r["bits"]) for r in rows) == [(b, w) for b in ("torch", "tvm") for w in (2, 4, 8)]
    assert all(r["median_ms"] > 0 for r in rows)
    assert [r["op"] for r in rows if r["backend"] == "tvm" and r["bits"] == 2] == ["csr_aggregate_narrow (2^2 levels)"]
    assert all(r["speedup_over_int8"] == 1.0 for r in rows if r["bits"] == 8)


def test_bit_configs_cover_at_least_eight_distinct_assignments():
    sites = {"a.weight": "weight", "a.output": "linear_out", "a.edge_weight": "edge_weight", "a.aggregate": "aggregate"}
    configs = _script("profile_bitops").bit_configs(sites)
    assert len({tuple(sorted(c.items())) for c in configs.values()}) >= 8
    assert configs["w2"] == {"a.weight": 2, "a.output": 8, "a.edge_weight": 8, "a.aggregate": 8}


def test_mp_precision_smoke_writes_speedups(tmp_path):
    assert _script("mp_precision").main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "mp_precision.csv").open()))
    assert [r["path"] for r in rows] == ["fp32", "int32", "int16", "int8", "int8->int32 (exact)"]
    assert float(rows[0]["speedup"]) == 1.0 and all(float(r["mean_ms"]) > 0 for r in rows)
    assert (tmp_path / "mp_precision.png").exists()


def test_latency_search_smoke_writes_both_penalties_with_measured_latency(tmp_path):
    from mixq_compile import cpu

    threads = torch.get_num_threads()
    assert _script("latency_search").main(["--smoke", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the experiment's thread settings do not leak
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [r["penalty"] for r in rows] == ["none", "bitops", "latency"]
    assert all(float(r["latency_ms"]) > 0 and float(r["predicted_ms"]) > 0 for r in rows)
    assert all(r["cpu"] == cpu.summary() and 0 <= float(r["acc"]) <= 100 for r in rows)
    assert rows[0]["bits"].split() == ["8"] * len(rows[0]["bits"].split())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cpu"]["model"] == cpu.model() and len(summary["runs"]) == 3
    ((name, table),) = summary["tables"].items()
    assert table["base_ms"] > 0 and len(table["delta_ms"]) == len(rows[0]["bits"].split())
    assert (tmp_path / f"table_{name.replace(' ', '_')}.json").is_file()  # the cache a rerun reuses
    assert (tmp_path / "acc_vs_latency.png").stat().st_size > 1000
