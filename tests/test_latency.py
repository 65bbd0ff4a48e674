"""Latency-aware search: the measured table (every site and candidate, cache keyed and refused when stale), the
latency penalty (differentiable, moves logits toward widths that are faster in the table, budget hinge) and its
errors. No assertion compares two timings: only the structure of what was measured and the penalty's arithmetic."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch
from torch_geometric.nn import GCNConv

import mixq_compile as mq
import mixq_compile.latency_measure as measuring
from mixq_compile.atomic import write_file
from mixq_compile.cost.latency import LatencyTable, LatencyTableError, measurement_key

from helpers import random_graph

SETTINGS = {"rounds": 2, "warmup": 1, "repeats": 2}


class OneGCN(torch.nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.conv = GCNConv(8, hidden)

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


def tiny(hidden: int = 4, bit_widths=(4, 8)):
    inputs = random_graph(30, 90, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(OneGCN(hidden), inputs, bit_widths), inputs


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def measured(model, tmp_path_factory):
    """One real measurement (through export and load_artifact), cached in a file."""
    qmodel, inputs = model
    cache = tmp_path_factory.mktemp("latency") / "table.json"
    return mq.latency_table(qmodel, inputs, cache=cache, progress=False, **SETTINGS), cache


def hand_table(qmodel, delta: dict[str, dict[int, float]] | None = None, base_ms: float = 10.0) -> LatencyTable:
    """A table with chosen Δ (0 where not given) and this model's plan and CPU, as if measured here."""
    rows = {name: dict.fromkeys(q.bit_widths, 0.0) | (delta or {}).get(name, {}) for name, q in qmodel.quantizers()}
    key = measurement_key(qmodel.plan, [], "torch", {})
    return LatencyTable(base_ms, rows, noise_ms=0.1, cpu=mq.cpu.summary(), backend="torch", key=key)


@pytest.fixture
def fake_measurement(monkeypatch):
    """Measuring without exporting or timing: counts the measurements; every Δ comes out as -1 ms."""
    calls = []

    def interleaved(reference, others, inputs, **kwargs):
        calls.append(len(others))
        n, rounds = len(others), kwargs["rounds"]
        return measuring.PairedTimings((5.0,) * (rounds * (n + 1)), ((4.0,) * rounds,) * n, ((-1.0,) * rounds,) * n)

    monkeypatch.setattr(measuring, "export", lambda frozen, inputs, path, backend: path)
    monkeypatch.setattr(measuring, "load_artifact", lambda path: lambda *args: None)
    monkeypatch.setattr(measuring, "time_interleaved", interleaved)
    return calls


# -- the measured table ------------------------------------------------------------------------------------------


def test_table_has_every_site_and_candidate(model, measured):
    qmodel, _ = model
    table, _ = measured
    assert set(table.delta_ms) == {name for name, _ in qmodel.quantizers()}
    for name, q in qmodel.quantizers():
        assert sorted(table.delta_ms[name]) == sorted(q.bit_widths)
        assert table.delta_ms[name][max(q.bit_widths)] == 0.0
        assert all(math.isfinite(d) for d in table.delta_ms[name].values())
    variants = sum(len(q.bit_widths) - 1 for _, q in qmodel.quantizers())
    assert len(table.base_samples_ms) == SETTINGS["rounds"] * (variants + 1)
    assert table.base_ms > 0 and table.noise_ms >= 0
    assert table.cpu == mq.cpu.summary() and table.backend == "torch"
    assert table.key["threads"] == torch.get_num_threads() and table.key["settings"]["repeats"] == 2
    assert table.predict({}) == table.base_ms == table.predict(qmodel.chosen_bits() | dict.fromkeys(table.delta_ms, 8))
    site = next(iter(table.delta_ms))
    assert table.predict({site: 4}) == pytest.approx(table.base_ms + table.delta_ms[site][4])


def test_cached_table_is_reused_without_measuring(model, measured, fake_measurement):
    qmodel, inputs = model
    table, cache = measured
    assert mq.latency_table(qmodel, inputs, cache=cache, progress=False, **SETTINGS) == table
    assert fake_measurement == []


def test_json_round_trip(measured):
    table, cache = measured
    assert LatencyTable.from_json(table.to_json()) == table
    assert LatencyTable.from_json(cache.read_text()) == table


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda key: key["cpu"].update(model="Some Other CPU"), "cpu"),
        (lambda key: key.update(plan="0123456789abcdef"), "plan"),
        (lambda key: key.update(backend="onnx"), "backend"),
        (lambda key: key.update(torch="1.0"), "torch"),
        (lambda key: key.update(threads=99), "threads"),
        (lambda key: key.update(input_shapes=[[[99, 8], "torch.float32"]]), "input_shapes"),
    ],
)
def test_stale_cache_is_named_and_measured_again(model, measured, tmp_path, fake_measurement, edit, named):
    qmodel, inputs = model
    table, _ = measured
    key = json.loads(json.dumps(table.key))
    edit(key)
    cache = write_file(tmp_path / "table.json", replace(table, key=key).to_json())
    with pytest.warns(UserWarning, match=rf"measured for another .*{named}.*measuring again"):
        fresh = mq.latency_table(qmodel, inputs, cache=cache, progress=False, **SETTINGS)
    assert fake_measurement and all(d == -1.0 for row in fresh.delta_ms.values() for d in row.values() if d)
    assert LatencyTable.from_json(cache.read_text()) == fresh  # replaced by the new measurement


def test_cache_of_another_model_is_measured_again(measured, fake_measurement):
    _, cache = measured
    other, inputs = tiny(hidden=6)
    with pytest.warns(UserWarning, match="measured for another .*plan"):
        mq.latency_table(other, inputs, cache=write_copy(cache), progress=False, **SETTINGS)
    assert fake_measurement


def write_copy(cache):
    """A copy of the shared cache file, so a test that replaces it leaves the module's one alone."""
    return write_file(cache.with_name("copy.json"), cache.read_text())


def test_other_settings_are_measured_again(model, measured, fake_measurement):
    qmodel, inputs = model
    _, cache = measured
    copy = write_copy(cache)
    with pytest.warns(UserWarning, match="settings"):
        mq.latency_table(qmodel, inputs, cache=copy, progress=False, **(SETTINGS | {"repeats": 3}))
    assert fake_measurement


@pytest.mark.parametrize("text", ["{not json", '{"base_ms": 1.0}', "", '{"base_ms": -1, "delta_ms": {}}'])
def test_corrupt_cache_is_named_and_measured_again(model, tmp_path, fake_measurement, text):
    qmodel, inputs = model
    cache = tmp_path / "table.json"
    cache.write_text(text)
    with pytest.warns(UserWarning, match="cannot be read.*measuring again"):
        table = mq.latency_table(qmodel, inputs, cache=cache, progress=False, **SETTINGS)
    assert LatencyTable.from_json(cache.read_text()) == table
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]  # no staging file left behind


def test_bit_widths_limit_what_is_measured(fake_measurement):
    qmodel, inputs = tiny(bit_widths=(2, 4, 8))
    table = mq.latency_table(qmodel, inputs, bit_widths=(4,), progress=False, **SETTINGS)
    assert all(sorted(row) == [4, 8] for row in table.delta_ms.values())
    with pytest.raises(LatencyTableError, match="no 2-bit measurement"):
        mq.penalty(qmodel, cost="latency", latency=table)
    with pytest.raises(ValueError, match=r"bit_widths=\[3\] must name candidate widths"):
        mq.latency_table(qmodel, inputs, bit_widths=(3,), progress=False)


def test_latency_table_needs_the_mixed_model(model):
    qmodel, inputs = model
    with pytest.raises(TypeError, match=r"mixed model returned by mixq_compile\.quantize"):
        mq.latency_table(mq.freeze(qmodel), inputs)
    with pytest.raises(TypeError, match="got OneGCN"):
        mq.latency_table(OneGCN(), inputs)


# -- the penalty ------------------------------------------------------------------------------------------------


def test_penalty_is_expected_latency_over_base():
    qmodel, _ = tiny()
    sites = [name for name, _ in qmodel.quantizers()]
    table = hand_table(qmodel, {sites[0]: {4: -3.0}, sites[1]: {4: 1.0}})
    probs = {name: q.probabilities().detach() for name, q in qmodel.quantizers()}
    expected = 10.0 + probs[sites[0]][0] * -3.0 + probs[sites[1]][0] * 1.0
    value = mq.penalty(qmodel, cost="latency", latency=table)
    assert value.item() == pytest.approx(float(expected) / 10.0, rel=1e-6)
    frozen = mq.freeze(qmodel, {sites[0]: 4})
    assert mq.penalty(frozen, cost="latency", latency=table).item() == pytest.approx(
        table.predict(frozen.chosen_bits()) / table.base_ms
    )


def test_penalty_moves_logits_toward_faster_widths():
    qmodel, _ = tiny()
    sites = [name for name, _ in qmodel.quantizers()]
    fast, slow = sites[0], sites[2]  # 4 bits halves the latency at one site, costs 20 % more at another
    table = hand_table(qmodel, {fast: {4: -5.0}, slow: {4: 2.0}})
    before = {name: q.probabilities()[0].item() for name, q in qmodel.quantizers()}
    optimizer = torch.optim.Adam(mq.arch_parameters(qmodel), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        mq.penalty(qmodel, cost="latency", latency=table).backward()
        optimizer.step()
    after = {name: q.probabilities()[0].item() for name, q in qmodel.quantizers()}  # probability of 4 bits
    assert after[fast] > before[fast] + 0.1
    assert after[slow] < before[slow] - 0.1
    assert all(after[s] == pytest.approx(before[s]) for s in sites if s not in (fast, slow))  # Δ = 0: no pull
    assert qmodel.chosen_bits()[fast] == 4


def test_budget_hinge():
    qmodel, _ = tiny()
    site = next(name for name, _ in qmodel.quantizers())
    table = hand_table(qmodel, {site: {4: -4.0}})
    assert mq.penalty(qmodel, cost="latency", latency=table, budget_ms=10.0).item() == 0.0  # under the budget
    tight = mq.penalty(qmodel, cost="latency", latency=table, budget_ms=6.5)
    assert tight.item() > 0
    tight.backward()
    assert qmodel.quantizer(site).alpha.grad[0] < 0  # the hinge pulls toward the faster width


def test_default_penalty_is_unchanged():
    qmodel, _ = tiny()
    assert torch.equal(mq.penalty(qmodel), mq.penalty(qmodel, cost="bitops"))
    assert torch.equal(mq.penalty(qmodel, budget=0.5), mq.penalty(qmodel, cost="bitops", budget=0.5))


def test_penalty_errors_name_the_fix():
    qmodel, _ = tiny()
    table = hand_table(qmodel)
    with pytest.raises(ValueError, match=r"needs a measured table: latency=mixq_compile.latency_table"):
        mq.penalty(qmodel, cost="latency")
    with pytest.raises(ValueError, match="unknown penalty cost 'speed'"):
        mq.penalty(qmodel, cost="speed")
    with pytest.raises(ValueError, match="need cost='latency'"):
        mq.penalty(qmodel, latency=table)
    with pytest.raises(ValueError, match="give budget_ms"):
        mq.penalty(qmodel, cost="latency", latency=table, budget=0.5)
    with pytest.raises(TypeError, match="needs a LatencyTable"):
        mq.penalty(qmodel, cost="latency", latency={"base_ms": 1.0})


def test_table_of_another_model_plan_or_cpu_is_refused():
    qmodel, _ = tiny()
    other, _ = tiny(hidden=6)  # same site names, other shapes
    table = hand_table(qmodel)
    with pytest.raises(LatencyTableError, match="another site plan"):
        mq.penalty(other, cost="latency", latency=table)
    renamed = replace(table, delta_ms={f"x.{k}": v for k, v in table.delta_ms.items()})
    with pytest.raises(LatencyTableError, match="another model: sites missing"):
        mq.penalty(qmodel, cost="latency", latency=renamed)
    elsewhere = replace(table, key=table.key | {"cpu": table.key["cpu"] | {"level": "portable"}}, cpu="a 486")
    with pytest.raises(LatencyTableError, match=r"another CPU \(a 486\).*measure it here"):
        mq.penalty(qmodel, cost="latency", latency=elsewhere)


@pytest.mark.parametrize(
    ("budget", "match"),
    [(0.0, "must be positive"), (-1.0, "must be positive"), (float("nan"), "finite number"), ("5", "finite number"),
     (True, "finite number"), (3.0, "below the fastest latency the table predicts")],
)  # fmt: skip
def test_bad_budget(budget, match):
    qmodel, _ = tiny()
    table = hand_table(qmodel, {next(name for name, _ in qmodel.quantizers()): {4: -4.0}})  # fastest: 6 ms
    with pytest.raises(ValueError, match=match):
        mq.penalty(qmodel, cost="latency", latency=table, budget_ms=budget)


def test_from_json_names_what_is_wrong():
    with pytest.raises(LatencyTableError, match=r"not a latency table.*KeyError"):
        LatencyTable.from_json('{"base_ms": 2.0}')
    with pytest.raises(LatencyTableError, match="base_ms must be a positive number"):
        LatencyTable.from_json(
            '{"base_ms": 0, "delta_ms": {}, "noise_ms": 0, "cpu": "x", "backend": "torch", "key": {}}'
        )
