"""mq.sensitivity: per-site and cumulative quantization error against FP32, suggested bits, CSV and PNG."""

from __future__ import annotations

import warnings

import pytest
import torch

import mixq_compile as mq
from mixq_compile.models import PlanetoidGCN

from helpers import random_graph


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    graphs = [random_graph(60, 240, 12, seed=s) for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(PlanetoidGCN(12, 5, hidden=16).eval(), graphs[0])
    mq.calibrate(qmodel, graphs, progress=False)
    return qmodel.eval(), graphs


def test_errors_fall_with_the_bits_and_the_cumulative_curve_ends_at_the_whole_model(calibrated):
    qmodel, graphs = calibrated
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    report = mq.sensitivity(qmodel, graphs, progress=False)
    assert all(torch.equal(v, qmodel.state_dict()[k]) for k, v in before.items()), "the model is not changed"
    sites = [name for name, _ in qmodel.quantizers()]
    assert {r.site for r in report.sites} == set(sites) and len(report.sites) == 3 * len(sites)
    for site in sites:
        assert report.error(site, 2) > report.error(site, 4) > report.error(site, 8) >= 0
    assert [r.site for r in report.cumulative] == sites
    all_eight = mq.sensitivity(mq.freeze(qmodel, bits=8), graphs, progress=False)
    assert all_eight.cumulative[-1].relative_error < report.cumulative[-1].relative_error or report.chosen == {
        s: 8 for s in sites
    }
    row = report.sites[0]
    assert row.sqnr_db == pytest.approx(-20 * torch.log10(torch.tensor(row.relative_error)).item(), rel=1e-6)


def test_suggested_bits_keep_every_site_under_the_tolerance_and_freeze_takes_them(calibrated, tmp_path):
    qmodel, graphs = calibrated
    report = mq.sensitivity(qmodel, graphs, progress=False)
    bits = report.suggest_bits(tolerance=0.02)
    for site, b in bits.items():
        assert report.error(site, b) <= 0.02 or b == 8
        assert b == 2 or report.error(site, {4: 2, 8: 4}[b]) > 0.02, "nothing narrower would do"
    frozen = mq.freeze(qmodel, bits)
    assert frozen.chosen_bits() == bits
    assert "cumulative" in str(report)
    assert report.to_csv(tmp_path / "s.csv").read_text().count("\n") == len(report.sites) + len(report.cumulative) + 1
    assert report.plot(tmp_path / "s.png").stat().st_size > 0


def test_no_batches_is_a_clear_error(calibrated):
    with pytest.raises(ValueError, match="no batches"):
        mq.sensitivity(calibrated[0], [], progress=False)
