"""Degree-Quant option: protection probabilities, Bernoulli masks, bypass in training only, gradients."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv

import mixq_compile as mq
from mixq_compile.models import PlanetoidGCN
from mixq_compile.quant.degree_quant import protect, protection_probability
from mixq_compile.saved_model import _config_from_dict, _config_to_dict

from helpers import random_graph


def _quantize(model, inputs, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, inputs, config=mq.QuantConfig(**config))


def _record_masks(qmodel) -> list:
    """Masks sampled by the model's Degree-Quant module, one per forward pass."""
    masks = []
    qmodel.graph_module.get_submodule("dq_mask").register_forward_hook(lambda m, args, out: masks.append(out))
    return masks


def test_protection_probability_follows_the_in_degree_cdf():
    # In-degrees (targets = row 1): node 0 <- 1, 2, 3; node 1 <- 0; nodes 2, 3: none. CDF: 0 -> 2/4, 1 -> 3/4, 3 -> 1.
    edge_index = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 1]])
    p = protection_probability(edge_index, 4, low=0.2, high=0.6)
    assert torch.allclose(p, 0.2 + 0.4 * torch.tensor([1.0, 0.75, 0.5, 0.5]))
    with pytest.raises(ValueError, match="low <= high"):
        mq.DegreeQuant(low=0.5, high=0.1)


def test_masks_are_bernoulli_with_the_graph_probabilities_and_only_in_training():
    x, ei = random_graph(40, 200, 8)
    q = _quantize(PlanetoidGCN(8, 3, hidden=8), (x, ei), degree_quant=mq.DegreeQuant(low=0.1, high=0.9))
    masks = _record_masks(q)
    q.train()
    q(x, ei)
    expected = protection_probability(ei, 40, 0.1, 0.9)
    mask_module = q.graph_module.get_submodule("dq_mask")
    draws = torch.stack([mask_module(expected) for _ in range(4000)]).float()
    assert masks[0].dtype == torch.bool and masks[0].shape == (40,)
    tolerance = 5 * (expected * (1 - expected) / 4000).sqrt() + 1e-3
    assert ((draws.mean(0) - expected).abs() <= tolerance).all()
    assert draws.std(0).gt(0).all(), "every node is random (0.1 <= p <= 0.9)"
    q.eval()
    q(x, ei)
    assert masks[-1] is None, "nothing is protected at eval time"


def test_eval_output_is_unaffected_and_activation_ranges_use_percentiles():
    x, ei = random_graph(40, 200, 8)
    config = dict(degree_quant=mq.DegreeQuant(high=0.5), cache_structure=True)
    dq = _quantize(PlanetoidGCN(8, 3, hidden=8), (x, ei), **config)
    plain = _quantize(PlanetoidGCN(8, 3, hidden=8), (x, ei))
    plain.load_state_dict(dq.state_dict())
    dq.eval(), plain.eval()
    assert torch.equal(dq(x, ei), plain(x, ei))
    cached = dq.graph_module.get_submodule("structure_cache").subgraph.code
    assert "protection_probability" in cached, "the probabilities depend on the graph only: computed once"
    assert _config_from_dict(_config_to_dict(dq.config)) == dq.config, "save/load keeps the option"
    for site in dq.plan.sites:
        assert site.spec.range_init == ("minmax" if site.kind == "weight" else "percentile"), site.name
    assert {s.spec.range_init for s in plain.plan.sites} == {"minmax", "mse"}  # weights min/max, the rest MSE


def test_protected_nodes_keep_their_float_values_in_training():
    class LinearOnGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 4)

        def forward(self, x, edge_index):
            return self.lin(x) + 0 * edge_index.sum()

    x, ei = random_graph(200, 600, 8)
    model = LinearOnGraph()
    q = _quantize(model, (x, ei), kinds=frozenset({"input"}), degree_quant=mq.DegreeQuant(low=0.5, high=0.5))
    masks = _record_masks(q)
    quantized = q.eval()(x, ei)
    trained = q.train()(x, ei)
    mask = masks[-1]
    assert 0 < mask.sum() < mask.numel()
    assert torch.allclose(trained[mask], model(x, ei)[mask], atol=1e-6), "protected rows are float"
    assert torch.equal(trained[~mask], quantized[~mask]), "other rows are quantized"
    assert not torch.allclose(quantized[mask], model(x, ei)[mask], atol=1e-3), "the check must see quantization"


def test_messages_from_protected_source_nodes_are_not_quantized_in_training():
    """One GCN layer, only its edge weights quantized: the edges whose *source* is protected keep float weights."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    x, ei = random_graph(60, 240, 8)
    conv = GCNConv(8, 4, improved=True, bias=False)
    q = _quantize(conv, (x, ei), kinds=frozenset({"edge_weight"}), degree_quant=mq.DegreeQuant(low=0.5, high=0.5))
    masks = _record_masks(q)
    trained = q.train()(x, ei)
    mask = masks[-1]
    edges, weight = gcn_norm(ei, None, 60, improved=True, add_self_loops=True)
    quantizer = next(quantizer for _, quantizer in q.quantizers())
    used = torch.where(mask[edges[0]], weight, quantizer.eval()(weight))
    h = conv.lin(x)
    expected = torch.zeros(60, 4).index_add_(0, edges[1], used.unsqueeze(1) * h[edges[0]])
    assert torch.allclose(trained, expected, atol=1e-5)
    by_target = torch.where(mask[edges[1]], weight, quantizer(weight))
    wrong = torch.zeros(60, 4).index_add_(0, edges[1], by_target.unsqueeze(1) * h[edges[0]])
    assert not torch.allclose(trained, wrong, atol=1e-5), "the check must tell sources from targets"


def test_gradients_flow_with_degree_quant():
    x, ei = random_graph(40, 200, 8)
    q = _quantize(PlanetoidGCN(8, 3, hidden=8), (x, ei), degree_quant=mq.DegreeQuant(high=0.5))
    q.train()
    (q(x, ei).square().sum() + mq.penalty(q)).backward()
    for name, p in q.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in q.arch_parameters())
    assert q.quantizer("conv1.aggregate").candidates[-1].scale.grad.abs() > 0


def test_graph_level_sites_are_always_quantized_and_node_level_sites_of_a_batch_are_protected():
    from mixq_compile.models import TUGIN

    from helpers import random_batch

    x, ei, batch = random_batch(4, 10, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = mq.quantize(
            TUGIN(8, 3, hidden=16, layers=2), (x, ei, batch), config=mq.QuantConfig(degree_quant=mq.DegreeQuant())
        )
    assert not [w for w in caught if "Degree-Quant" in str(w.message)]
    protected = {n.args[1].meta["mixq_site"] for n in q.graph_module.graph.nodes if n.target is protect}
    rows = {s.name: s.shape[0] for s in q.plan.sites}
    assert protected and all(rows[s] == rows["convs.0.nn.0.input"] for s in protected), "node-level sites only"
    assert {s for s in rows if s.startswith("head.")} and not {s for s in protected if s.startswith("head.")}
