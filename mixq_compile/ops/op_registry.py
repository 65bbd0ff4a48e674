"""How the ``mixq::`` operators are registered: with ``torch.library.Library`` directly, for a small call overhead.

``torch.library.custom_op`` wraps every call in an autograd function and a torch.compile-disable frame: ~9 µs per
call here, against ~3 µs for an operator defined on a ``Library``. A feature program run op by op calls eight such
operators for a two-layer GCN, whose whole Cora forward takes ~2 ms, so the wrapper alone cost a few percent.
These operators are inference-only (integer codes have no gradient), so they need none of it: the schema is
inferred from the type hints as ``custom_op`` would, the kernel is registered for every backend
(``CompositeExplicitAutograd``), and a fake (meta) kernel lets ``torch.export`` and AOTInductor trace them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_LIBRARY = torch.library.Library("mixq", "FRAGMENT")


class Operator:
    """A registered ``mixq::<name>`` operator; calling it calls ``torch.ops.mixq.<name>``."""

    def __init__(self, name: str, kernel: Callable) -> None:
        self.name, self.kernel = name, kernel
        self.__doc__ = kernel.__doc__
        _LIBRARY.define(name + torch.library.infer_schema(kernel, mutates_args=()))
        _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")

    def register_fake(self, fake: Callable) -> Callable:
        """The output metadata (shape, dtype) from the inputs', for tracing."""
        torch.library.register_fake(f"mixq::{self.name}", fake, lib=_LIBRARY)
        return fake

    def __call__(self, *args, **kwargs):
        return getattr(torch.ops.mixq, self.name)(*args, **kwargs)


def operator(name: str) -> Callable[[Callable], Operator]:
    """Decorator: register the function as the kernel of ``mixq::<name>`` (schema from its type hints)."""
    return lambda kernel: Operator(name, kernel)
