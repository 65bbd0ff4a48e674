"""Small tensors derived from an op's parameters, computed once per parameter tensor instead of on every call.

A loaded program passes the same buffers (zero-points, multipliers, biases, weight sums) to its ops on every call,
and the native kernels want them in one form (a contiguous float32 or int32 vector of one entry per channel, the
zero-point and bias terms of a GEMM folded into one offset). Deriving that form took 5-15 us of tensor ops per op
call, ~15 % of a call of Cora's GCN artifact (1.2 ms). :func:`derived` memoizes a derivation on the identity and
version counter of its tensor arguments, so an in-place change of a parameter is seen; entries hold their tensors,
so an id is never reused while its entry lives, and the least recently used of :data:`ENTRIES` entries goes first.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

ENTRIES = 512
#: tensors with more elements are not memoized (parameters are vectors of one entry per channel at most)
MAX_ELEMENTS = 1 << 16

F = TypeVar("F", bound=Callable[..., Tensor])


def _key(args: tuple, max_elements: int) -> tuple | None:
    """The memo key of ``args`` (tensors by identity and version, everything else by value), or None where one
    cannot be made: a tensor of more than ``max_elements``, or an inference-mode tensor (it has no version
    counter)."""
    key = []
    for a in args:
        if isinstance(a, Tensor):
            if a.numel() > max_elements or a.is_inference():
                return None
            key.append((id(a), a._version, a))
        else:
            key.append(a)
    return tuple(key)


def derived(function: F | None = None, *, max_elements: int = MAX_ELEMENTS) -> F | Callable[[F], F]:
    """Memoize ``function`` (a pure function of tensor and hashable arguments, returning a tensor that its callers
    only read) on its arguments' identity and version; ``@derived(max_elements=n)`` for tensor arguments larger
    than :data:`MAX_ELEMENTS`."""
    if function is None:
        return functools.partial(derived, max_elements=max_elements)
    memo: OrderedDict[tuple, Tensor] = OrderedDict()
    lock = threading.Lock()  # artifacts may be called from several threads

    @functools.wraps(function)
    def lookup(*args):
        key = _key(args, max_elements)
        if key is None:
            return function(*args)
        with lock:
            value = memo.get(key)
            if value is not None:
                memo.move_to_end(key)
                return value
        value = function(*args)
        with lock:
            memo[key] = value
            if len(memo) > ENTRIES:
                memo.popitem(last=False)
        return value

    lookup.cache_clear = memo.clear  # type: ignore[attr-defined]
    return lookup  # type: ignore[return-value]


@derived
def channel_vector(t: Tensor | None, channels: int, dtype: torch.dtype, minus: int = 0) -> Tensor:
    """``t`` (one value, or one per channel; None for zeros) as a contiguous ``[channels]`` vector of ``dtype``,
    less ``minus``."""
    vector = torch.zeros(channels, dtype=dtype) if t is None else t.reshape(-1).to(dtype).expand(channels)
    return (vector - minus if minus else vector).contiguous()  # int32 / float32 less a Python int keep their dtype
