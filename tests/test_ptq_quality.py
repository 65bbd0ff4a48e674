"""8-bit post-training quantization (no QAT) stays close to FP32 on graphs it was not calibrated on (issue 16).

Every model of ``experiments/ptq_error.py`` (two layers of common convs; PyG's GCN, GraphSAGE, GIN, GAT, also with
``jk="cat"`` / ``"max"``) is quantized on graph A, calibrated with ``mq.calibrate`` on other graphs, frozen at 8
(and 4) bits everywhere and evaluated on a held-out graph B. The target is 2 % relative L2 at 8 bits; models that
do not reach it yet are expected failures (reported XPASS when a fix makes them pass: then the mark must go), and
every model must stay below the regression bound. The 4-bit error is printed (no target).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from experiments import ptq_error

CALIBRATION_GRAPHS = 4
TARGET = 0.02
# Measured before this suite's defaults (calibrated on A only): 0.02-0.41; now at most ~0.09 (GAT, attention on
# graphs whose isolated nodes A's range never saw). A bound, not the target.
REGRESSION_BOUND = 0.10
# Above the 2 % target with 4 calibration graphs (measured 0.018-0.085; mean aggregations quantized after their
# division since session 11: GraphSAGE 0.031 -> 0.023, GraphSAGE-jk=max 0.022 -> 0.019): per-tensor 8-bit rounding
# at 10-28 sites in sequence costs ~1.5-2 % even on the calibration graph itself, plus clipping of the extremes of
# B that the calibration graphs never reached (a 1.25x wider 8-bit range halves that part but adds rounding noise:
# worst 0.085 -> 0.052, mean 0.033 -> 0.025, still 4 of 24 under 2 %).
ABOVE_TARGET = frozenset(ptq_error.MODELS) - {"APPNP", "SGConv", "SAGEConv-max", "GCN-jk=max", "GraphSAGE-jk=max"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The MSE grid search is many small ops: on a shared 2-core machine threads only contend (4x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _errors(name: str) -> dict[int, float]:
    return ptq_error.ptq_errors(name, CALIBRATION_GRAPHS)


@pytest.mark.parametrize(
    "name",
    [
        # not strict: GIN sits at 0.0203, and another CPU's float summation order may land it under the target
        pytest.param(n, marks=pytest.mark.xfail(strict=False, reason="issue 16: 8-bit PTQ above 2 %"))
        if n in ABOVE_TARGET
        else n
        for n in sorted(ptq_error.MODELS)
    ],
)
def test_8bit_ptq_within_2_percent_on_a_held_out_graph(name):
    errors = _errors(name)
    print(f"{name}: 8-bit {errors[8]:.4f}, 4-bit {errors[4]:.4f}")
    assert errors[8] < TARGET


@pytest.mark.parametrize("name", sorted(ptq_error.MODELS))
def test_8bit_ptq_below_the_regression_bound(name):
    errors = _errors(name)
    print(f"{name}: 8-bit {errors[8]:.4f}, 4-bit {errors[4]:.4f}")
    assert errors[8] < REGRESSION_BOUND
    assert errors[4] < 0.5  # 4 bits at every site: coarse, but not noise
