"""mq.calibrate over many batches: ranges cover every batch, PyG Data/Batch loaders, clear errors; the observers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GCNConv, global_add_pool

import mixq_compile as mq
from mixq_compile.quant import QuantSpec
from mixq_compile.quant.observer import RangeObserver, observe_range

from helpers import covered_range, random_graph


class GraphGCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = GCNConv(8, 8), nn.Linear(8, 2)

    def forward(self, x, edge_index, batch):
        return self.head(global_add_pool(self.conv(x, edge_index).relu(), batch))


def _quantized(model: nn.Module, example, config: mq.QuantConfig | None = None) -> mq.QuantizedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model.eval(), example, config=config)


def _graphs(scales: tuple[float, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x * s, ei) for s, (x, ei) in zip(scales, (random_graph(30, 90, 8, seed=i) for i in range(len(scales))))]


@pytest.mark.parametrize("rule", ["minmax", "mse"])
def test_ranges_cover_every_calibration_graph_not_only_the_example(rule):
    specs = {"input": QuantSpec(range_init=rule)}
    graphs = _graphs((1.0, 4.0, 0.5))
    qmodel = _quantized(_NodeLinear(nn.Linear(8, 8)), graphs[0], mq.QuantConfig(specs=specs))
    low, high = covered_range(qmodel, "inner.input")
    assert high < float(graphs[1][0].max()) / 2  # the example alone does not cover the 4x graph ...
    mq.calibrate(qmodel, graphs, progress=False)
    low, high = covered_range(qmodel, "inner.input")
    step = (high - low) / 255
    slack = step if rule == "minmax" else 0.1 * (high - low)  # MSE at 8 bits clips the extremes by a few percent
    for x, _ in graphs:  # ... after calibration every graph lies inside the 8-bit range
        assert low - slack <= float(x.min()) and float(x.max()) <= high + slack


class _NodeLinear(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, edge_index):
        return self.inner(x)


def test_downstream_sites_observe_fp32_values():
    torch.manual_seed(0)
    model = _NodeLinear(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    x, ei = random_graph(30, 90, 8)
    qmodel = _quantized(model, (x, ei))
    with torch.no_grad():
        hidden = model.inner[0](x)
    # The 2-bit candidate of the first layer's output would distort a range taken from the mixed output.
    low, high = covered_range(qmodel, "inner.0.output")
    step = (high - low) / 255
    assert low <= float(hidden.min()) + step and float(hidden.max()) - step <= high
    assert high - low <= float(hidden.max() - hidden.min()) + 2 * step


def test_pyg_data_and_batch_loaders_calibrate_by_argument_names():
    torch.manual_seed(0)
    datas = [Data(x=torch.randn(12, 8) * (1 + i), edge_index=random_graph(12, 30, 8, seed=i)[1]) for i in range(6)]
    example = Batch.from_data_list(datas[:2])
    qmodel = _quantized(GraphGCN(), (example.x, example.edge_index, example.batch))
    mq.calibrate(qmodel, DataLoader(datas, batch_size=2), progress=False)
    high = covered_range(qmodel, "conv.lin.input")[1]
    assert high >= 0.98 * max(float(d.x.max()) for d in datas)
    mq.calibrate(qmodel, datas, progress=False)  # single Data objects: their batch vector is all zeros
    assert qmodel(example.x, example.edge_index, example.batch).shape == (2, 2)


def test_mappings_by_input_name():
    x, ei = random_graph(20, 60, 8)
    qmodel = _quantized(_NodeLinear(nn.Linear(8, 4)), (x, ei))
    mq.calibrate(qmodel, [{"x": x * 3, "edge_index": ei}], progress=False)
    assert covered_range(qmodel, "inner.input")[1] >= 0.98 * float((x * 3).max())


def test_empty_iterable_is_a_clear_error_and_keeps_the_ranges():
    x, ei = random_graph(20, 60, 8)
    qmodel = _quantized(_NodeLinear(nn.Linear(8, 4)), (x, ei))
    before = covered_range(qmodel, "inner.input")
    with pytest.raises(ValueError, match="no batches"):
        mq.calibrate(qmodel, [], progress=False)
    assert covered_range(qmodel, "inner.input") == before
    assert torch.isfinite(qmodel(x, ei)).all()  # quantizing again, not observing


def test_wrong_arity_and_missing_attribute_name_the_batch():
    x, ei = random_graph(20, 60, 8)
    qmodel = _quantized(_NodeLinear(nn.Linear(8, 4)), (x, ei))
    before = covered_range(qmodel, "inner.input")
    with pytest.raises(mq.InputSignatureError, match=r"calibration batch 1: .*takes 2 inputs \(x, edge_index\), got 3"):
        mq.calibrate(qmodel, [(x * 5, ei), (x, ei, ei)], progress=False)
    assert covered_range(qmodel, "inner.input") == before  # the failed run changed nothing
    with pytest.raises(mq.InputSignatureError, match="no tensor attribute 'edge_index'"):
        mq.calibrate(qmodel, [Data(x=x)], progress=False)
    with pytest.raises(TypeError, match="calibration batch 0 is a str"):
        mq.calibrate(qmodel, ["x"], progress=False)


def test_moving_average_moves_part_of_the_way_and_minmax_all_the_way():
    batches = [torch.tensor([-1.0, 1.0]), torch.tensor([-11.0, 11.0])]
    ranges = {}
    for rule in ("minmax", "moving_average"):
        observer = RangeObserver(QuantSpec(range_init=rule, averaging_constant=0.1))
        for batch in batches:
            observer.update(batch)
        ranges[rule] = tuple(float(v) for v in observer.range())
    assert ranges["minmax"] == (-11.0, 11.0)
    assert ranges["moving_average"] == pytest.approx((-2.0, 2.0))


def test_percentile_and_mse_use_every_batch():
    spec = QuantSpec(range_init="percentile", percentile=0.25)
    observer = RangeObserver(spec)
    observer.update(torch.zeros(100))
    observer.update(torch.ones(300))  # 3/4 of all values are 1: the 75th percentile of the union
    assert float(observer.range()[1]) == 1.0
    assert float(observe_range(torch.zeros(100), spec)[1]) == 0.0


def test_per_channel_weights_get_one_range_per_channel():
    spec = QuantSpec(symmetric=True, granularity="channel", axis=0)
    low, high = observe_range(torch.tensor([[1.0, -2.0], [0.5, 0.25]]), spec)
    assert low.tolist() == [-2.0, 0.0] and high.tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    ("bits", "values", "expected"),
    [
        (8, [0.0, 0.5], (0.0, 1.0)),
        (8, [-0.5, 0.0], (-1.0, 0.0)),
        (8, [0.0, 3.0], (0.0, 3.0)),
        (2, [0.0, 0.5], (0.0, 0.5)),
    ],
)
def test_bounds_widen_only_at_high_bits_and_only_when_the_data_lie_inside(bits, values, expected):
    spec = QuantSpec(bits=bits, signed=False, bounds=(-1.0, 1.0))
    low, high = observe_range(torch.tensor(values), spec)
    assert (float(low), float(high)) == expected


@pytest.mark.parametrize(
    ("bits", "bounds", "batches", "expected"),
    [
        (8, None, [[-1.0, 1.0], [-2.0, 2.0], [-3.0, 3.0]], (-5.0, 5.0)),  # 3 + 6 / 3 batches * (3 - mean 2)
        (8, None, [[-1.0, 1.0], [-2.0, 2.0], [-3.0, 3.0], [-2.0, 2.0]] * 2, (-3.75, 3.75)),  # 3 + 6 / 8 * (3 - 2)
        (8, None, [[0.0, 3.0]], (0.0, 3.0)),  # one batch: no spread to extrapolate from
        (4, None, [[-1.0, 1.0], [-2.0, 2.0], [-3.0, 3.0]], (-3.0, 3.0)),  # low bits: resolution first
        (8, (-1.0, 1.0), [[0.0, 0.5], [0.0, 0.9]], (0.0, 1.0)),  # inside the bounds: the bound, not past it
        (8, (-1.0, 1.0), [[0.0, 1.5], [0.0, 2.5]], (0.0, 4.0)),  # the data left the bounds: 2.5 + 3 * 0.5
    ],
)
def test_ranges_over_several_batches_reach_past_the_most_extreme_one(bits, bounds, batches, expected):
    observer = RangeObserver(QuantSpec(bits=bits, bounds=bounds, tail_margin=6.0))
    for batch in batches:
        observer.update(torch.tensor(batch))
    assert tuple(float(v) for v in observer.range()) == pytest.approx(expected)


def test_the_default_activation_ranges_cover_a_graph_past_the_calibration_graphs():
    graphs = _graphs((1.0, 1.2, 1.4))
    qmodel = _quantized(_NodeLinear(nn.Linear(8, 8)), graphs[0])
    mq.calibrate(qmodel, graphs, progress=False)
    _, high = covered_range(qmodel, "inner.input")
    maxima = [float(x.max()) for x, _ in graphs]
    extended = max(maxima) + mq.config.TAIL_MARGIN / len(maxima) * (max(maxima) - sum(maxima) / len(maxima))
    assert high == pytest.approx(extended, rel=0.01) and high > 1.1 * max(maxima)


def test_calibrating_some_sites_leaves_the_others_alone():
    torch.manual_seed(0)
    graphs = _graphs((1.0, 4.0))
    qmodel = _quantized(_NodeLinear(nn.Linear(8, 8)), graphs[0])
    before = {name: q.candidate(8).scale.clone() for name, q in qmodel.quantizers()}
    mq.calibrate(qmodel, graphs, sites=["input"], progress=False)  # a kind
    after = {name: q.candidate(8).scale for name, q in qmodel.quantizers()}
    kinds = {s.name: s.kind for s in qmodel.plan.sites}
    assert all(torch.equal(before[n], after[n]) == (kinds[n] != "input") for n in before)
    with pytest.raises(ValueError, match="names no site or kind"):
        mq.calibrate(qmodel, graphs, sites=["nope"], progress=False)
