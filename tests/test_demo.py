"""``mixq-compile demo`` end to end at a tiny size: every stage runs and the deployed artifacts agree with the models
they were exported from."""

from __future__ import annotations

import pytest

from mixq_compile.demo import run_demo

from helpers import data_root


@pytest.mark.skipif(data_root() is None, reason="Cora not found: set MIXQ_DATA to a folder with Planetoid/Cora/raw")
def test_demo_on_cora_deploys_what_it_trained(capsys):
    rows = run_demo(str(data_root()), epochs=3, hidden=16, bits=(4, 8), lam=0.1, seed=0, backends=["onnx"], repeats=2)
    by_name = {(r["what"], r["precision"]): r for r in rows}
    eager, simulated = by_name["PyG FP32 eager", "fp32"], by_name["QAT model (fake-quant)", "simulated"]
    integer, fp32 = by_name["onnx artifact", "integer"], by_name["onnx artifact", "fp32"]
    # Deployed = simulated: the integer program computes what the fake-quantized model computes (one test node of
    # 1000 may round the other way at a tie), and the FP32 artifact is the eager model.
    assert abs(integer["test_acc"] - simulated["test_acc"]) <= 0.1 + 1e-9
    assert abs(fp32["test_acc"] - eager["test_acc"]) <= 0.1 + 1e-9
    assert 4.0 <= integer["avg_bits"] <= 8.0 and fp32["avg_bits"] == eager["avg_bits"] == 32.0
    assert integer["gbitops_paper"] < eager["gbitops_paper"] / 3
    assert all(r["median_ms"] > 0 for r in (eager, integer, fp32))
    out = capsys.readouterr().out
    assert "[6/6] profile" in out and "vs eager" in out and "sites; average bits" in out
