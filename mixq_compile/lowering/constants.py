"""The constants a graph's ``get_attr`` nodes name: read one, drop one (the lowering rewrites that inspect or
replace constants, e.g. packing weights and folding a ReLU into a requantize)."""

from __future__ import annotations

import torch
from torch import fx


def _owner(gm: fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    owner, _, name = target.rpartition(".")
    return (gm.get_submodule(owner) if owner else gm), name


def constant(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor at ``target`` (a ``get_attr`` node's dotted target)."""
    module, name = _owner(gm, target)
    return getattr(module, name)


def drop_constant(gm: fx.GraphModule, target: str) -> None:
    """Remove the tensor at ``target`` from the module, so an exported program no longer carries it."""
    module, name = _owner(gm, target)
    delattr(module, name)
