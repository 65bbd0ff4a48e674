"""Run under an emulated CPU by test_emulated_cpu.py: load each artifact given on the command line, run its
self-check inputs, and also run the ONNX feature graph as written (no mixq_compile rewrite), printing JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import mixq_compile as mq
from mixq_compile import cpu, selfcheck

report = {"level": cpu.level(), "capability": torch.backends.cpu.get_cpu_capability(), "artifacts": {}}
for arg in sys.argv[1:]:
    path = Path(arg)
    inputs, expected = selfcheck.load(path)[0]  # the export example (load_artifact checks every case)
    entry = {}
    try:
        artifact = mq.load_artifact(path)
        got = artifact(*inputs)
        got = got if isinstance(got, tuple) else (got,)
        entry["max_abs_diff"] = max(float((g - e).abs().max()) for g, e in zip(got, expected))
        entry["kernel_paths"] = artifact.kernel_paths
    except mq.ArtifactError as error:
        entry["error"] = str(error)
    if artifact.backend == "onnx":
        from mixq_compile.runtimes.onnx.backend import load_onnx

        structure = artifact.structure(*inputs)
        raw = load_onnx(path / "features.onnx")(*inputs, *structure)
        entry["as_written_max_abs_diff"] = max(float((g - e).abs().max()) for g, e in zip(raw, expected))
    report["artifacts"][path.name] = entry
print("RESULT " + json.dumps(report))
