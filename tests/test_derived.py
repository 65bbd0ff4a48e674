"""Parameter forms memoized per tensor (``ops/derived.py``): the same values as computing them afresh."""

from __future__ import annotations

import torch

from mixq_compile.ops import derived
from mixq_compile.ops.derived import channel_vector


def _counting():
    calls = []

    @derived.derived
    def doubled(t: torch.Tensor, channels: int) -> torch.Tensor:
        calls.append(channels)
        return (2 * t).expand(channels).contiguous()

    return doubled, calls


def test_a_derivation_runs_once_per_tensor_and_arguments():
    doubled, calls = _counting()
    t = torch.tensor([3])
    first = doubled(t, 4)
    assert doubled(t, 4) is first and calls == [4]
    assert doubled(t, 5).tolist() == [6] * 5 and calls == [4, 5]
    assert doubled(torch.tensor([3]), 4).tolist() == [6] * 4 and len(calls) == 3  # another tensor, same values


def test_an_in_place_change_is_seen():
    doubled, calls = _counting()
    t = torch.tensor([3])
    assert doubled(t, 2).tolist() == [6, 6]
    t.add_(1)
    assert doubled(t, 2).tolist() == [8, 8] and len(calls) == 2


def test_large_and_inference_tensors_are_not_memoized():
    doubled, calls = _counting()
    big = torch.ones(derived.MAX_ELEMENTS + 1)
    doubled(big, big.numel())
    doubled(big, big.numel())
    with torch.inference_mode():
        frozen = torch.tensor([1])
    doubled(frozen, 3)
    assert doubled(frozen, 3).tolist() == [2, 2, 2]
    assert len(calls) == 4


def test_the_element_limit_is_per_derivation():
    calls = []

    @derived.derived(max_elements=10)
    def negated(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.numel())
        return -t

    small, large = torch.ones(10), torch.ones(11)
    for _ in range(2):
        assert negated(small).tolist() == [-1.0] * 10 and negated(large).tolist() == [-1.0] * 11
    assert calls == [10, 11, 11]


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(derived, "ENTRIES", 3)
    doubled, calls = _counting()
    tensors = [torch.tensor([i]) for i in range(4)]
    for t in tensors:
        doubled(t, 1)
    doubled(tensors[0], 1)  # evicted by the fourth: derived again
    doubled(tensors[3], 1)
    assert len(calls) == 5


def test_channel_vector():
    assert channel_vector(torch.tensor(2.5), 3, torch.float32).tolist() == [2.5] * 3
    assert channel_vector(torch.tensor([1, 2], dtype=torch.int8), 2, torch.int32, 3).tolist() == [-2, -1]
    v = channel_vector(None, 4, torch.int32, -1)
    assert v.dtype == torch.int32 and v.tolist() == [1] * 4 and v.is_contiguous()
