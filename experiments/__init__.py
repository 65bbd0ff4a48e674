"""Reproductions of the paper's experiments, each reachable as ``mixq-compile experiment NAME`` (or
``python -m experiments.NAME``) from a checkout: they are not part of the installed package.

One module per experiment (``planetoid``, ``planetoid_dq``, ``tudataset``, ``csl``, ``ablation``, ``explore_all``,
``ogbn_arxiv``, ``scale``); shared machinery in :mod:`.harness`: :mod:`.harness.sweep` (resumable JSONL sweeps,
local/Ray executors), :mod:`.harness.runner`, :mod:`.harness.stats`, :mod:`.harness.plots`, :mod:`.harness.paper`
(published numbers) and :mod:`.harness.results_md` (``RESULTS.md``). The benchmarks beside them (``profile_bitops``,
``mp_precision``, ``ptq_error``, ``latency_search``, ``demo_seeds``, ``bench_*``) run the same way,
``python -m experiments.NAME``.
Results go to :data:`RESULTS` (``results/`` of this checkout, wherever the command runs) unless ``--out`` says.
"""

from __future__ import annotations

import importlib
from pathlib import Path

#: the checkout these experiments belong to, and its results folder
CHECKOUT = Path(__file__).resolve().parents[1]
RESULTS = CHECKOUT / "results"

EXPERIMENTS = ("planetoid", "planetoid_dq", "tudataset", "csl", "ablation", "explore_all", "ogbn_arxiv", "scale")


def get(name: str):
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{name}")
