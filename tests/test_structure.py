"""Structure analysis (structure_nodes) and the opt-in structure cache (QuantConfig.cache_structure)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import mixq_compile as mq
from mixq_compile.capture import capture
from mixq_compile.ir.structure_cache import MEMCMP_BELOW, StructureCache, same_contents
from mixq_compile.models import PlanetoidGCN
from mixq_compile.passes.structure import cache_structure, structure_nodes

from helpers import random_graph


@pytest.fixture(scope="module")
def quantized_pair():
    x, ei = random_graph(40, 160, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = mq.quantize(PlanetoidGCN(8, 3, hidden=16), (x, ei))
        cached = mq.quantize(PlanetoidGCN(8, 3, hidden=16), (x, ei), config=mq.QuantConfig(cache_structure=True))
    cached.load_state_dict(plain.state_dict())
    return plain.eval(), cached.eval(), x, ei


@pytest.fixture
def pair(quantized_pair):
    """The same GCN quantized without and with the structure cache (identical weights and quantizers), fresh copies."""
    plain, cached, x, ei = quantized_pair
    return copy.deepcopy(plain), copy.deepcopy(cached), x, ei


def _cache(qmodel) -> StructureCache:
    return qmodel.graph_module.get_submodule("structure_cache")


def test_gcn_structure_part_is_the_normalisation_and_its_frontier_feeds_features(quantized_pair):
    plain, _, _, _ = quantized_pair
    gm = plain.graph_module
    part = structure_nodes(gm)
    targets = {str(n.target) for n in part.nodes}
    assert {"aten.scatter_add_.default", "aten.pow_.Scalar", "aten.masked_fill_.Scalar", "aten.cat.default"} <= targets
    assert [n.name for n in part.inputs if n.op == "placeholder"] == ["edge_index"]
    assert all(n.op == "placeholder" or n.args[0].name == "x" for n in part.inputs), "only sizes are read from x"
    members = set(part.nodes)
    x_node = next(n for n in gm.graph.nodes if n.name == "x")
    reachable, todo = set(), [u for u in x_node.users if str(u.target) != "aten.sym_size.int"]
    while todo:
        node = todo.pop()
        if node not in reachable:
            reachable.add(node)
            todo.extend(node.users)
    assert not members & reachable, "a structure node depends on the features"
    assert part.frontier and all(any(u not in members for u in n.users) for n in part.frontier)
    # The normalised edge weights, read by each layer's edge-weight quantizer, are frontier values.
    edge_weight_nodes = {s.node for s in plain.plan.sites if s.kind == "edge_weight"}
    assert len(edge_weight_nodes) == 2 and edge_weight_nodes <= {n.name for n in part.frontier}


def test_memory_a_feature_op_writes_into_is_not_structure_and_caching_stays_correct():
    class ScatterIntoZeros(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x, edge_index):
            buf = torch.zeros(x.shape[0], 4)  # sizes only: structure ...
            buf.index_add_(0, edge_index[1], x[edge_index[0]])  # ... but features are written into it
            return self.lin(buf)

    x, ei = random_graph(20, 60, 4)
    gm, _ = capture(ScatterIntoZeros(), (x, ei))
    part = structure_nodes(gm)
    assert "aten.zeros.default" not in {str(n.target) for n in part.nodes}
    cached = cache_structure(copy.deepcopy(gm))
    assert torch.allclose(cached(x, ei), gm(x, ei)) and torch.allclose(cached(x, ei), gm(x, ei))


def test_cached_model_equals_uncached_and_recomputes_only_for_a_different_graph(pair):
    plain, cached, x, ei = pair
    assert torch.equal(cached(x, ei), plain(x, ei))
    cache = _cache(cached)
    runs = cache.misses
    assert torch.equal(cached(x, ei), plain(x, ei)) and cache.misses == runs, "same graph: no recomputation"
    _, other = random_graph(40, 120, 8, seed=1)
    assert torch.equal(cached(x, other), plain(x, other)) and cache.misses == runs + 1
    edited = other.clone()
    cached(x, edited)
    edited[1, :10] = edited[0, :10]  # an in-place edit of the same tensor must not reuse the old normalisation
    assert torch.equal(cached(x, edited), plain(x, edited))
    smaller_x, smaller = random_graph(25, 70, 8, seed=2)
    assert torch.equal(cached(smaller_x, smaller), plain(smaller_x, smaller))
    with torch.inference_mode():
        cached(smaller_x, smaller)
    cached.train()(smaller_x, smaller).sum().backward()  # no inference tensors from the cache reach autograd


def test_gradients_through_the_cached_model_equal_the_uncached_ones(pair):
    plain, cached, x, ei = pair
    for model in (plain, cached):
        for _ in range(2):  # the second pass runs on cached structure values
            model.zero_grad()
            model(x, ei).square().sum().backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    for name, p in cached.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads[name], rtol=1e-5, atol=1e-7), name
    edge_scale = cached.quantizer("conv1.edge_weight").candidates[0].scale
    assert edge_scale.grad.abs().sum() > 0, "the cached edge weights still train their quantizer"


def test_copies_start_empty_and_frozen_and_saved_models_keep_the_cache(pair, tmp_path):
    plain, cached, x, ei = pair
    cached(x, ei)
    frozen = mq.freeze(cached)
    assert _cache(frozen)._outputs is None
    assert torch.equal(frozen(x, ei), mq.freeze(plain)(x, ei))
    mq.save(frozen, tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = mq.load(tmp_path / "m", PlanetoidGCN(8, 3, hidden=16), (x, ei))
    assert again.config.cache_structure and isinstance(_cache(again), StructureCache)
    assert torch.equal(again.eval()(x, ei), frozen(x, ei))


@pytest.mark.parametrize("edges", [0, 1, 10556, MEMCMP_BELOW // 16 + 1])  # none, one, Cora's, past memcmp
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_graph_tensors_compare_equal_exactly_when_every_element_is_equal(edges, dtype):
    graph = torch.randint(0, 2 if dtype == torch.bool else 1000, (2, edges)).to(dtype)
    assert same_contents(graph, graph.clone())
    for position in {0, graph.numel() // 2, graph.numel() - 1} if edges else set():
        changed = graph.clone().reshape(-1)
        changed[position] = ~changed[position] if dtype == torch.bool else changed[position] + 1
        assert not same_contents(changed.reshape(2, edges), graph)
    if edges > 1:  # views: a row at an offset into its storage, and a non-contiguous column slice
        other = graph.clone()
        other[1, -1] = ~other[1, -1] if dtype == torch.bool else other[1, -1] + 1
        assert same_contents(graph[1], other[1].clone()) is False and same_contents(graph[1], graph[1].clone())
        assert same_contents(graph[:, ::2], graph[:, ::2].clone())
        assert not same_contents(graph[:, 1:], other[:, 1:])


def test_float_graph_tensors_compare_as_torch_equal():
    nan = torch.tensor([float("nan"), 0.0])
    assert not same_contents(nan, nan.clone())  # torch.equal: NaN is not equal to itself
    assert same_contents(torch.tensor([0.0]), torch.tensor([-0.0]))
