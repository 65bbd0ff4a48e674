"""Deep copies of modules that hold exported graphs, without torch's pytree deprecation noise.

``torch.fx.Graph.__deepcopy__`` copies the pytree specs that ``torch.export`` attaches to a graph's code generator,
and copying a ``LeafSpec`` makes torch 2.13 warn that ``isinstance(treespec, LeafSpec)`` is deprecated — once per
copy, from torch's own code, with nothing a user can change. Every pass that copies a graph goes through here so the
warning is silenced in one place and only around the copy.
"""

from __future__ import annotations

import copy
import warnings
from typing import TypeVar

T = TypeVar("T")

_LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def quiet_deepcopy(obj: T) -> T:
    """``copy.deepcopy(obj)`` with torch's LeafSpec ``FutureWarning`` (and only it) suppressed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LEAFSPEC_WARNING, category=FutureWarning)
        return copy.deepcopy(obj)
