"""BitOPs conventions and the search penalty."""

from __future__ import annotations

import warnings

import pytest
import torch

import mixq_compile as mq
from mixq_compile.cost.bitops import assignment_bitops, quantized_bitops
from mixq_compile.cost.penalty import expected_bitops, site_expected_bits
from mixq_compile.models import PlanetoidGCN

from helpers import random_graph

CORA = {"nodes": 2708, "edges": 10556, "features": 1433, "classes": 7}


#: The paper's quantization points: its last layer's output is quantized too (the default leaves it in float).
PAPER_POINTS = mq.QuantConfig(quantize_unread_sites=True)


@pytest.fixture(scope="module")
def cora_sized():
    """The paper's GCN on a graph with Cora's sizes (BitOPs depend only on N, |E|, F, H, C and self-loops)."""
    torch.manual_seed(0)
    x, edge_index = random_graph(CORA["nodes"], CORA["edges"], CORA["features"], seed=3)
    model = PlanetoidGCN(CORA["features"], CORA["classes"], hidden=128).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, (x, edge_index), config=PAPER_POINTS)
    return model, qmodel, (x, edge_index)


def test_by_default_the_last_output_stays_float_and_operand_bitops_do_not_change(cora_sized):
    model, paper, args = cora_sized
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = mq.quantize(model, args)
    assert [s.name for s in default.plan.sites] == [s.name for s in paper.plan.sites if s.name != "conv2.aggregate"]
    bits = {s.name: b for s, b in zip(default.plan.sites, [8, 2, 4, 8, 8, 4, 8, 4])}
    # no op reads the logits' codes: their width never entered the operand (wa) convention
    wa = mq.bitops(paper, args, bits=bits | {"conv2.aggregate": 2}).bitops
    assert mq.bitops(default, args, bits=bits).bitops == wa


def test_paper_convention_reproduces_the_logged_cora_numbers_exactly(cora_sized):
    model, qmodel, args = cora_sized
    names = [s.name for s in qmodel.plan.sites]
    assert len(names) == 9, "the paper's 2-layer GCN has 9 quantization points"
    all8 = dict.fromkeys(names, 8)
    assert mq.bitops(qmodel, args, convention="paper", bits=all8).bitops == 4_015_909_440
    # MQ order [X, Θ, XΘ, Â, out | Θ, XΘ, Â, out] = [8, 8, 4, 8, 8 | 8, 8, 4, 8]
    config = dict(zip(names, [8, 8, 4, 8, 8, 8, 8, 4, 8]))
    assert mq.bitops(qmodel, args, convention="paper", bits=config).bitops == pytest.approx(3_353_626_517.3, abs=0.1)
    assert mq.bitops(model, args, convention="paper").bitops == 16_110_067_712


def test_site_order_matches_the_paper_slots(cora_sized):
    _, qmodel, _ = cora_sized
    kinds = [s.kind for s in qmodel.plan.sites]
    assert kinds == [
        "activation", "weight", "linear_out", "edge_weight", "aggregate",
        "weight", "linear_out", "edge_weight", "aggregate",
    ]  # fmt: skip


def test_wa_convention_counts_macs_times_both_operand_widths():
    x, _ = random_graph(30, 90, 5, seed=1)
    model = torch.nn.Linear(5, 3, bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(mq.NoQuantizableOpError):
            mq.quantize(torch.nn.ReLU(), (x,))
        q = mq.quantize(model, (x,), (2, 4))
    bits = {s.name: (4 if s.kind == "weight" else 2) for s in q.plan.sites}
    macs = 30 * 5 * 3
    assert mq.bitops(q, (x,), convention="wa", bits=bits).bitops == macs * 2 * 4
    assert mq.bitops(model, (x,), convention="wa").bitops == macs * 32 * 32
    assert mq.bitops(model, (x,), convention="paper").bitops == macs * 32


def test_average_bits_and_model_size(cora_sized):
    _, qmodel, args = cora_sized
    names = [s.name for s in qmodel.plan.sites]
    bits = dict(zip(names, [8, 2, 4, 8, 8, 4, 8, 4, 8]))
    report = mq.bitops(qmodel, args, bits=bits)
    assert report.avg_bits == pytest.approx(sum(bits.values()) / 9)
    assert report.model_bytes == pytest.approx((128 * 1433 * 2 + 7 * 128 * 4) / 8)


def test_bad_convention_and_unknown_sites_raise(cora_sized):
    _, qmodel, args = cora_sized
    with pytest.raises(ValueError, match="convention"):
        mq.bitops(qmodel, args, convention="flops")
    with pytest.raises(ValueError, match="unknown sites"):
        mq.bitops(qmodel, args, bits={"nope": 4})


def test_relative_penalty_is_one_at_highest_bits_and_its_gradient_prefers_fewer_bits():
    x, edge_index = random_graph(50, 200, 8, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(PlanetoidGCN(8, 3, hidden=16), (x, edge_index))
    value = mq.penalty(q)
    assert 0 < value.item() < 1
    value.backward()
    # Under "wa" a site costs what the MACs that read it cost; the model's final output feeds no MAC.
    costed = {name: qz for name, qz in q.quantizers() if qz.alpha.grad is not None}
    assert set(costed) == {s.name for s in q.plan.sites} - {"conv2.aggregate"}
    for qz in costed.values():
        assert qz.alpha.grad[-1] > 0 > qz.alpha.grad[0], "descent must lower the 8-bit logit and raise the 2-bit one"
    # A few steps on the penalty alone lower the expected bit-width of every costed site.
    optimizer = torch.optim.SGD(q.arch_parameters(), lr=50.0)
    before = [float(qz.expected_bits()) for qz in costed.values()]
    for _ in range(5):
        optimizer.zero_grad()
        mq.penalty(q).backward()
        optimizer.step()
    after = [float(qz.expected_bits()) for qz in costed.values()]
    assert all(a < b for a, b in zip(after, before))
    with torch.no_grad():
        for alpha in q.arch_parameters():
            alpha.copy_(torch.tensor([-30.0, -30.0, 30.0]))
    assert mq.penalty(q).item() == pytest.approx(1.0, abs=1e-6)


def test_paper_penalty_and_budget_hinge():
    x, edge_index = random_graph(50, 200, 8, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(PlanetoidGCN(8, 3, hidden=16), (x, edge_index))
    q(x, edge_index)
    paper = mq.penalty(q, scaling="paper")
    expected = 0.0
    for site in q.plan.sites:
        quantizer = q.quantizer(site.name)
        scale = 8192.0 * (8192.0 if site.in_message_passing else 1.0)
        expected += quantizer.expected_bits().item() * quantizer.last_numel / scale
    assert paper.item() == pytest.approx(expected, rel=1e-6)
    assert all(s.in_message_passing for s in q.plan.sites)
    assert mq.penalty(q, budget=1.0).item() == 0.0
    tight = mq.penalty(q, budget=0.05)
    assert tight.item() > 0
    tight.backward()
    assert all(a.grad[-1] > 0 for a in q.arch_parameters() if a.grad is not None)
    with pytest.raises(ValueError, match="budget"):
        mq.penalty(q, budget=-1)
    with pytest.raises(ValueError, match="scaling"):
        mq.penalty(q, scaling="kib")


def test_budget_in_the_paper_convention_is_a_hinge_at_that_count():
    x, edge_index = random_graph(50, 200, 8, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(PlanetoidGCN(8, 3, hidden=16), (x, edge_index))
    expected = sum(  # each site at its expected bit-width, counted the reference's way
        c.bitops for c in quantized_bitops(q.graph_module, q.plan, q.example_shapes, site_expected_bits(q), "paper")
    )
    expected = float(expected)
    assert float(expected_bitops(q, "paper")) == pytest.approx(expected)
    assert float(expected_bitops(q, "paper")) != pytest.approx(float(expected_bitops(q, "wa")))
    assert mq.penalty(q, budget=expected * 1.01, budget_convention="paper").item() == 0.0
    assert mq.penalty(q, budget=expected / 2, budget_convention="paper").item() == pytest.approx(1.0, rel=1e-5)


def test_paper_numbers_on_the_real_cora_graph(tmp_path):
    from mixq_compile.data import DatasetNotFoundError, load_dataset

    from helpers import data_root

    root = data_root()
    try:
        data = load_dataset("Cora", root, cache=tmp_path).dataset[0] if root else None
    except DatasetNotFoundError:
        data = None
    if data is None:
        pytest.skip("Cora raw files are absent: set MIXQ_DATA")
    model = PlanetoidGCN(1433, 7).eval()
    args = (data.x, data.edge_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args, config=PAPER_POINTS)
    names = [s.name for s in qmodel.plan.sites]
    assert mq.bitops(qmodel, args, convention="paper", bits=dict.fromkeys(names, 8)).bitops == 4_015_909_440
    assert mq.bitops(model, args, convention="paper").bitops == 16_110_067_712


def _mixed_gcn():
    x, edge_index = random_graph(60, 240, 8, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(PlanetoidGCN(8, 3, hidden=16), (x, edge_index))


def test_fit_budget_lowers_the_cheapest_sites_until_the_assignment_fits():
    q = _mixed_gcn()
    highest = {name: 8 for name in q.chosen_bits()}
    full = assignment_bitops(q, highest, "wa")
    with torch.no_grad():
        for alpha in q.arch_parameters():
            alpha.copy_(torch.tensor([0.0, 0.0, 0.1]))  # every site leans weakly to 8 bits
        q.quantizer("conv1.lin.weight").alpha.copy_(torch.tensor([0.0, 0.0, 50.0]))  # ...this one strongly
    assert mq.fit_budget(q, full) == highest, "an assignment within budget is returned as it is"
    fitted = mq.fit_budget(q, 0.6 * full)
    assert assignment_bitops(q, fitted, "wa") <= 0.6 * full
    assert all(fitted[name] <= 8 for name in fitted) and fitted != highest
    assert fitted["conv1.lin.weight"] == 8, "the site the search prefers most keeps its bits"
    assert fitted["conv1.edge_weight"] == 8 and fitted["conv2.edge_weight"] == 8, "no BitOPs saved there"
    assert mq.fit_budget(q, 0.6) == fitted, "a budget in (0, 1] is a fraction of the all-highest cost"
    paper = mq.fit_budget(q, 0.6 * assignment_bitops(q, highest, "paper"), convention="paper")
    assert assignment_bitops(q, paper, "paper") <= 0.6 * assignment_bitops(q, highest, "paper")


def test_fit_budget_below_the_cheapest_assignment_names_the_minimum():
    q = _mixed_gcn()
    lowest = assignment_bitops(q, {name: 2 for name in q.chosen_bits()}, "wa")
    with pytest.raises(ValueError, match="cheapest assignment"):
        mq.fit_budget(q, 0.5 * lowest)
    with pytest.raises(ValueError, match="convention"):
        mq.fit_budget(q, lowest, convention="bops")
