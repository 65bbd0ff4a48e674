"""Reproductions of the paper's experiments, each reachable as ``mixq-compile experiment NAME``.

One module per experiment (``planetoid``, ``planetoid_dq``, ``tudataset``, ``csl``, ``ablation``, ``explore_all``,
``ogbn_arxiv``, ``scale``); shared machinery: :mod:`.sweep` (resumable JSONL sweeps, local/Ray executors),
:mod:`.runner`,
:mod:`.stats`, :mod:`.plots`, :mod:`.paper` (published numbers) and :mod:`.results_md` (``experiments/RESULTS.md``).
"""

from __future__ import annotations

import importlib

EXPERIMENTS = ("planetoid", "planetoid_dq", "tudataset", "csl", "ablation", "explore_all", "ogbn_arxiv", "scale")


def get(name: str):
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{name}")
