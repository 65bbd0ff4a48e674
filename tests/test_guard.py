"""The search guard: sites whose narrow choice costs validation accuracy are raised before QAT."""

from __future__ import annotations

import warnings

import torch

import mixq_compile as mq
from mixq_compile.guard import freeze_searched, raise_collapsed_sites
from mixq_compile.models import PlanetoidGCN

from helpers import random_graph


def _gcn_quantized():
    """(graph, FP32 GCN, its quantized model, "validation accuracy": agreement with the FP32 predictions)."""
    torch.manual_seed(0)
    x, edge_index = random_graph(80, 320, 12)
    model = PlanetoidGCN(12, 4, hidden=16).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, (x, edge_index))
    with torch.no_grad():
        target = model(x, edge_index).argmax(-1)

    def agreement(frozen) -> float:
        with torch.no_grad():
            return float((frozen(x, edge_index).argmax(-1) == target).float().mean())

    return (x, edge_index), model, qmodel, agreement


def test_a_collapsed_assignment_is_raised_until_validation_is_back_within_the_drop():
    _, _, qmodel, agreement = _gcn_quantized()
    collapsed = dict.fromkeys(qmodel.chosen_bits(), 2)
    assert agreement(mq.freeze(qmodel, collapsed).eval()) < 0.9, "all sites at 2 bits loses agreement"
    bits, log = raise_collapsed_sites(qmodel, agreement, 1.0, max_drop=0.05, bits=collapsed)
    assert agreement(mq.freeze(qmodel, bits).eval()) >= 0.95
    assert any(b > 2 for b in bits.values()) and len(log) == 1 + sum({2: 0, 4: 1, 8: 2}[b] for b in bits.values()), (
        "one log line per one-step raise"
    )
    untouched, log = raise_collapsed_sites(qmodel, agreement, 0.0)  # nothing to recover: the argmax stays
    assert untouched == qmodel.chosen_bits() and len(log) == 1


def test_freeze_searched_puts_the_searched_bits_on_the_fp32_weights():
    graph, model, searched, agreement = _gcn_quantized()
    with torch.no_grad():  # stands in for the search: weights and logits move away from the FP32 model
        for name, p in searched.named_parameters():
            p.add_(torch.randn_like(p) * (3.0 if name.endswith("alpha") else 0.5))
    weight = dict(model.named_parameters())["conv1.lin.weight"]
    moved = dict(searched.named_parameters())["graph_module.conv1.lin.weight"]
    assert not torch.equal(moved, weight)

    frozen, log = freeze_searched(model, searched, graph, None)
    assert frozen.chosen_bits() == searched.chosen_bits() and log == []
    assert torch.equal(dict(frozen.named_parameters())["graph_module.conv1.lin.weight"], weight), "QAT starts from FP32"

    given = dict.fromkeys(searched.chosen_bits(), 4)
    frozen, _ = freeze_searched(model, searched, graph, lambda m: 0.0, bits=given)
    assert frozen.chosen_bits() == given, "a given assignment (a budget's) is kept: no guard"

    for name in searched.chosen_bits():  # every site's argmax at 2 bits
        q = dict(searched.quantizers())[name]
        with torch.no_grad():
            q.alpha.copy_(torch.tensor([5.0, 0.0, 0.0]))
    frozen, log = freeze_searched(model, searched, graph, agreement, max_drop=0.02)
    assert agreement(frozen.eval()) >= 0.98 and log[0].startswith("argmax assignment") and len(log) > 1
