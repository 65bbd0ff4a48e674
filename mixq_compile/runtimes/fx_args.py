"""Reading an fx call's arguments the way every backend's converters need them (positional or keyword, index lists)."""

from __future__ import annotations

from torch import fx


def arg(node: fx.Node, index: int, name: str, default=None):
    """Positional-or-keyword argument of an fx call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def single_index(node: fx.Node) -> tuple[int, fx.Node] | None:
    """(axis, index tensor) of ``aten.index.Tensor`` indexing along one axis (``x[..., idx, ...]``), else ``None``."""
    used = [(axis, index) for axis, index in enumerate(node.args[1]) if index is not None]
    return used[0] if len(used) == 1 else None
