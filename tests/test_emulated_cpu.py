"""Artifacts on a CPU without VNNI, for real: the loading process runs under ``qemu-x86_64 -cpu EPYC-Milan`` (Zen 3:
AVX2, no AVX-512, no VNNI), so onnxruntime, ATen and our native kernels all dispatch as on that CPU, whatever CPU
runs the tests. It shows the hazard (a u8 × s8 ONNX graph as written saturates there) and that mixq_compile's
artifacts, exported on this machine, load and answer exactly there. Skips where qemu-user is not installed
(``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mixq_compile as mq
from mixq_compile import cpu

from helpers import MLP, random_graph

QEMU = shutil.which("qemu-x86_64")
EMULATED_CPU = "EPYC-Milan"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        QEMU is None or cpu.native_level() == "portable",
        reason="needs qemu-x86_64 (Debian's qemu-user) on an x86-64 host to emulate an AVX2-only CPU",
    ),
]


def _emulated(paths: list[Path]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != cpu.ENV}
    result = subprocess.run(
        [QEMU, "-cpu", EMULATED_CPU, sys.executable, str(Path(__file__).with_name("emulated") / "run_artifacts.py"),
         *map(str, paths)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_artifacts_exported_here_are_exact_on_an_emulated_avx2_cpu(tmp_path):
    torch.manual_seed(0)
    args = random_graph(120, 400, 64)
    args = (args[0].abs() * 3, args[1])  # large positive activations into 8-bit weights: pair sums past int16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(MLP(64, 64).eval(), args)
    qmodel(*args)
    frozen = mq.freeze(qmodel, {}).eval()
    paths = [
        mq.export(frozen, args, tmp_path / "onnx_u8s8", backend="onnx", backend_options={"matmul": "u8s8"}),
        mq.export(frozen, args, tmp_path / "onnx_auto", backend="onnx"),
        mq.export(frozen, args, tmp_path / "torch", backend="torch"),
    ]
    report = _emulated(paths)
    assert report["level"] == "avx2" and report["capability"] == "AVX2", "the emulated CPU must look like Zen 3"
    artifacts = report["artifacts"]
    for name, entry in artifacts.items():
        assert "error" not in entry, f"{name}: {entry.get('error')}"
        assert entry["max_abs_diff"] <= 1e-6, f"{name} is not exact on AVX2: {entry}"
    assert artifacts["onnx_u8s8"]["kernel_paths"]["matmul_integer"].startswith("u8u8 (rewritten at load")
    assert artifacts["torch"]["kernel_paths"]["linear_int"].startswith("int8_pairs")
    # the graph as written for a VNNI CPU is wrong on this one: what the load-time rewrite protects against
    if cpu.LEVELS.index(cpu.native_level()) >= cpu.LEVELS.index("vnni"):
        assert artifacts["onnx_u8s8"]["as_written_max_abs_diff"] > 1e-3
