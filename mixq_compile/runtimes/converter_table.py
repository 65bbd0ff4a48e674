"""What a backend's translator looks converters up in: one explicit table per backend, composed from its
converter modules (integer instructions, float ops, tensor ops, activations) and passed to the translator.

No converter registers itself by import side effect: a backend's ``converters.py`` lists the tables it merges, and a
coverage test per backend checks that every integer instruction has an entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import fx, nn


@dataclass(frozen=True)
class Converters:
    """``functions``: call target -> ``convert(builder, node)``; ``modules``: module type ->
    ``convert(builder, node, module)`` (the modules a captured graph holds, e.g. ``ModeBatchNorm``)."""

    functions: Mapping[object, Callable[..., object]]
    modules: Mapping[type, Callable[..., object]]

    def lookup(self, gm: fx.GraphModule, node: fx.Node) -> Callable[..., object] | None:
        """The converter of ``node`` as ``convert(builder, node)``, or ``None`` when there is none."""
        if node.op == "call_module":
            module: nn.Module = gm.get_submodule(node.target)
            convert = self.modules.get(type(module))
            return None if convert is None else lambda builder, n: convert(builder, n, module)
        if node.op == "call_function":
            return self.functions.get(node.target)
        return None
