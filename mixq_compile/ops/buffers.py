"""Reused output buffers for the native kernels' large outputs.

A program run op by op allocates every intermediate afresh. glibc serves allocations of 32 MB and more with
``mmap``, so each call of an artifact on a large graph faults in its intermediates page by page (a 256 MB int8
table: 65k page faults, each zeroing 4 kB) and unmaps them on return: on a 1M-node graph that was ~0.15 s of an
~0.8 s call. TVM's Relax VM keeps its intermediates in a pooled workspace; this pool does the same for the
``mixq::`` ops: an output of :data:`MIN_BYTES` or more comes from a buffer of the same shape and dtype that an
earlier call left, when nothing else still refers to it.

Safety: a caller never gets the pool's own tensor but a ``detach()`` alias of it, so every tensor sharing the
buffer's memory (aliases, views of them, NumPy arrays, DLPack capsules) holds a reference to its storage; a buffer is
handed out again only when the pool's tensor is the storage's sole holder. A program's intermediates are dropped by
the program as soon as their last reader ran, so in steady state every large output is reused, while an output a
user keeps is never overwritten. Kernels write every element of their outputs (as they must with ``torch.empty``),
so results do not depend on what a buffer held before.

Every output of :data:`MIN_BYTES` or more is also asked to live on transparent huge pages (``madvise``, before its
first touch; a no-op where the kernel says no): a fresh output otherwise takes a page fault every 4 kB, and the
kernels that gather rows of a table of hundreds of MB (a CSR aggregation reading the layer before's codes) missed
the TLB on nearly every row.

At most :data:`CAPACITY` buffers are kept, least recently used dropped first. ``MIXQ_REUSE_BUFFERS=0`` turns reuse
off (every output freshly allocated, the memory returned after each call); :func:`clear` drops what is kept.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading

import torch
from torch import Tensor

#: outputs below this are left to the allocator, whose heap serves them without fresh pages
MIN_BYTES = 4 << 20
#: buffers kept at most (a two-layer GNN on one graph size uses 4-6)
CAPACITY = 16

_lock = threading.Lock()
_buffers: list[Tensor] = []


def _holders(buffer: Tensor) -> int:
    return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata)


#: the holder count of a buffer that only the pool refers to (the count includes the storage object it is read by)
_IDLE = _holders(torch.empty(1))


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _want_huge_pages(buffer: Tensor) -> Tensor:
    """Advise the whole 2 MiB pages inside ``buffer`` as huge pages (Linux; any refusal is harmless)."""
    if _libc is not None:
        begin = buffer.data_ptr()
        start = (begin + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (begin + buffer.numel() * buffer.element_size()) & ~(_HUGE_PAGE - 1)
        if end > start:
            _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(_MADV_HUGEPAGE))
    return buffer


def enabled() -> bool:
    return os.environ.get("MIXQ_REUSE_BUFFERS", "1") != "0"


def empty(shape: tuple[int, ...] | list[int] | torch.Size, dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor like ``torch.empty(shape, dtype=dtype)``, reusing an idle pooled buffer for large
    ones (the caller must write every element)."""
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) * dtype.itemsize < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    if not enabled():
        return _want_huge_pages(torch.empty(shape, dtype=dtype))
    with _lock:
        for i, buffer in enumerate(_buffers):
            if buffer.shape == shape and buffer.dtype == dtype and _holders(buffer) == _IDLE:
                _buffers.append(_buffers.pop(i))  # most recently used last
                return buffer.detach()
        buffer = _want_huge_pages(torch.empty(shape, dtype=dtype))
        _buffers.append(buffer)
        del _buffers[:-CAPACITY]
        return buffer.detach()


def clear() -> None:
    """Drop every kept buffer (memory in use elsewhere stays with its users)."""
    with _lock:
        _buffers.clear()


def kept_bytes() -> int:
    """Bytes of the buffers the pool keeps."""
    with _lock:
        return sum(b.numel() * b.element_size() for b in _buffers)
