"""Reading an fx call's arguments the way the op's schema allows them: positionally or by keyword."""

from __future__ import annotations

from torch import fx


def arg(node: fx.Node, index: int, name: str, default=None):
    """Positional-or-keyword argument of an fx call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
