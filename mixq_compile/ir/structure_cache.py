"""The structure cache: a graph's topology-only results computed once and replayed while the graph stays the same.

The ``cache_structure`` pass (:mod:`mixq_compile.passes.structure`) puts one in a captured graph; artifacts use one
when loaded with ``cache_structure=True`` (PyG's ``cached=True``).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

import torch
from torch import Tensor, fx, nn

#: name of the StructureCache submodule in a graph after ``cache_structure``
CACHE_MODULE = "structure_cache"

#: graph tensors smaller than this are compared with libc's ``memcmp``, larger ones with ``torch.equal``, whichever
#: is faster (Intel Xeon, 2 threads: Cora's ``edge_index`` 2.7 against 11.6 us; 2 x 1M edges 1.1 against 0.8 ms)
MEMCMP_BELOW = 1 << 20


def _libc_memcmp() -> Callable[[int, int, int], int] | None:
    if sys.platform == "win32":
        return None
    memcmp = ctypes.CDLL(None).memcmp
    memcmp.restype, memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return memcmp


_memcmp = _libc_memcmp()


def same_contents(new: Tensor, old: Tensor) -> bool:
    """Whether two tensors of the same dtype and shape hold the same values (integer and bool tensors bit for bit;
    others as ``torch.equal`` compares them)."""
    size = new.numel() * new.element_size()
    if (
        _memcmp is not None
        and not (new.is_floating_point() or new.is_complex())
        and size < MEMCMP_BELOW
        and new.device.type == old.device.type == "cpu"
        and new.is_contiguous()
        and old.is_contiguous()
    ):
        return size == 0 or _memcmp(new.data_ptr(), old.data_ptr(), size) == 0
    return torch.equal(new, old)


class StructureCache(nn.Module):
    """Runs a structure-only subgraph and replays its outputs while the graph inputs stay the same.

    The cache key is, per input: for an integer tensor (``edge_index``, ``batch``), its content — a private copy
    compared byte by byte (:func:`same_contents`: a few microseconds for Cora's 10k edges), because object
    identity and version counters miss writes through ``.data``, NumPy views or DLPack; for a floating-point
    tensor (node features, which structure work reads only through their shape), its shape; for a size, its value;
    and whether inference mode is on (its outputs cannot be used by autograd later). Any change of the graph
    recomputes, and an equal graph in a new tensor is a hit. Floating inputs that require grad are never cached.
    Copies and pickles of the module start with an empty cache.
    """

    def __init__(self, subgraph: fx.GraphModule | Callable[..., tuple]) -> None:
        super().__init__()
        self.subgraph = subgraph
        self._key: tuple | None = None
        self._outputs: tuple | None = None
        self.misses = 0  # how many times the subgraph ran (for tests and diagnostics)

    @staticmethod
    def _key_of(inputs: tuple) -> tuple | None:
        key: list = [torch.is_inference_mode_enabled()]  # inference tensors must not reach autograd later
        for value in inputs:
            if isinstance(value, Tensor) and value.is_floating_point():
                if value.requires_grad:
                    return None
                key.append(("shape", tuple(value.shape)))  # node features: structure reads only their shape
            else:
                key.append(value)  # integer tensors by content (see _same), sizes by value
        return tuple(key)

    @staticmethod
    def _same(key: tuple, cached: tuple) -> bool:
        for new, old in zip(key, cached, strict=True):
            if isinstance(new, Tensor):
                same = isinstance(old, Tensor) and new.dtype == old.dtype and new.shape == old.shape
                if not (same and same_contents(new, old)):
                    return False
            elif new != old:
                return False
        return True

    def clear(self) -> None:
        self._key = self._outputs = None

    def lookup(self, inputs: tuple) -> tuple | None:
        """The cached outputs when ``inputs`` are the cached graph (the same tuple object while the entry lasts),
        else ``None``; nothing runs."""
        key = self._key_of(inputs)
        if key is not None and self._key is not None and self._same(key, self._key):
            return self._outputs
        return None

    def forward(self, *inputs):
        outputs = self.lookup(inputs)
        return outputs if outputs is not None else self.store(inputs)

    def store(self, inputs: tuple) -> tuple:
        """Run the subgraph on ``inputs`` and keep its outputs for them (where they may be cached): for a caller
        whose :meth:`lookup` just missed, without comparing the graph again."""
        key = self._key_of(inputs)
        outputs = tuple(self.subgraph(*inputs))
        self.misses += 1
        if key is None:
            self._key = self._outputs = None
        else:  # a private copy of every graph tensor: later writes to the caller's tensors cannot alter the key
            self._key = tuple(v.detach().clone() if isinstance(v, Tensor) else v for v in key)
            self._outputs = outputs
        return outputs

    def __getstate__(self):
        return {**self.__dict__, "_key": None, "_outputs": None}
