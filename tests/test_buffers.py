"""The native ops' output pool: reuses a large buffer only when nothing else refers to it, and an artifact that
reuses buffers gives the same outputs, call after call, without touching an output the caller kept."""

from __future__ import annotations

import pytest
import torch

import mixq_compile as mq
from mixq_compile.models import PlanetoidGCN
from mixq_compile.ops import buffers

from helpers import random_graph


@pytest.fixture
def pool(monkeypatch):
    """A pool that keeps outputs of 1 kB and more, empty at start and end."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 1024)
    monkeypatch.delenv("MIXQ_REUSE_BUFFERS", raising=False)
    buffers.clear()
    yield buffers
    buffers.clear()


def test_an_idle_buffer_is_handed_out_again(pool):
    first = pool.empty((64, 32), torch.int8)
    address = first.data_ptr()
    del first
    assert pool.empty((64, 32), torch.int8).data_ptr() == address
    assert pool.empty((64, 32), torch.int32).data_ptr() != address  # another dtype: another buffer


@pytest.mark.parametrize("keep", ["alias", "view", "numpy", "slice"])
def test_a_buffer_someone_still_refers_to_is_never_handed_out(pool, keep):
    out = pool.empty((64, 32), torch.int8)
    held = {"alias": lambda t: t, "view": lambda t: t.view(-1), "numpy": lambda t: t.numpy(),
            "slice": lambda t: t[3:5]}[keep](out)  # fmt: skip
    address = out.data_ptr()
    del out
    again = pool.empty((64, 32), torch.int8)
    assert again.data_ptr() != address
    del held, again
    assert pool.empty((64, 32), torch.int8).data_ptr() in {address} | {b.data_ptr() for b in pool._buffers}


def test_small_outputs_and_a_disabled_pool_allocate_afresh(pool, monkeypatch):
    pool.empty((4, 4), torch.int8)
    assert pool.kept_bytes() == 0
    monkeypatch.setenv("MIXQ_REUSE_BUFFERS", "0")
    pool.empty((64, 32), torch.int8)
    assert pool.kept_bytes() == 0


def test_the_pool_keeps_at_most_its_capacity(pool):
    held = [pool.empty((64, 32 + i), torch.int8) for i in range(pool.CAPACITY + 5)]
    assert len(pool._buffers) == pool.CAPACITY
    assert len({t.data_ptr() for t in held}) == len(held)


def test_an_artifact_reusing_buffers_is_exact_call_after_call(pool, tmp_path):
    """Two graphs of different sizes, alternately: each call equals the first call on its graph, and outputs the
    caller kept are unchanged by later calls."""
    x, edge_index = random_graph(300, 1500, 24, seed=1)
    other = random_graph(200, 900, 24, seed=2)
    model = PlanetoidGCN(24, 5, hidden=64).eval()
    frozen = mq.freeze(mq.quantize(model, (x, edge_index)), bits=8)
    artifact = mq.load_artifact(mq.export(frozen, (x, edge_index), tmp_path / "a", backend="torch"))
    first, first_other = artifact(x, edge_index), artifact(*other)
    kept = first.clone(), first_other.clone()
    assert pool.kept_bytes() > 0  # the program's int8 tables came from the pool
    for _ in range(3):
        assert torch.equal(artifact(x, edge_index), kept[0])
        assert torch.equal(artifact(*other), kept[1])
    assert torch.equal(first, kept[0]) and torch.equal(first_other, kept[1])
