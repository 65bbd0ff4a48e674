"""The visible pass pipeline: each pass is a named ``GraphModule -> GraphModule`` function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import fx

from ..config import QuantConfig
from .degree_quant import insert_degree_quant
from .find_sites import find_sites
from .insert_quantizers import insert_quantizers
from .structure import cache_structure
from .train_mode import make_mode_aware

Pass = Callable[[fx.GraphModule], fx.GraphModule]


def search_pipeline(config: QuantConfig) -> tuple[tuple[str, Pass], ...]:
    """Captured FP32 graph -> trainable graph with a mixed quantizer at every site (+ Degree-Quant, structure cache)."""
    passes: tuple[tuple[str, Pass], ...] = (
        ("make_mode_aware", make_mode_aware),
        ("find_sites", partial(find_sites, config=config)),
        ("insert_quantizers", insert_quantizers),
    )
    if config.degree_quant is not None:
        passes += (("insert_degree_quant", partial(insert_degree_quant, dq=config.degree_quant)),)
    if config.cache_structure:  # last: it also caches Degree-Quant's protection probabilities
        passes += (("cache_structure", cache_structure),)
    return passes


def run_pipeline(gm: fx.GraphModule, passes: Sequence[tuple[str, Pass]]) -> fx.GraphModule:
    for _name, transform in passes:
        gm = transform(gm)
    return gm
