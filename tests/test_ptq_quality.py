"""8-bit post-training quantization (no QAT) stays close to FP32 on graphs it was not calibrated on (issue 16).

Every model of ``experiments/ptq_error.py`` (two layers of each conv of ``test_pyg_convs.py``; PyG's GCN,
GraphSAGE, GIN, GAT, also with ``jk="cat"`` / ``"max"``) is quantized on graph A, calibrated with ``mq.calibrate``
on other graphs, frozen at 8 (and 4) bits everywhere and evaluated on a held-out graph B. The target is 2 % relative
L2 at 8 bits; models that do not reach it yet are expected failures (reported XPASS when a fix makes them pass:
then the mark must go), and every model must stay below the regression bound. The 4-bit error is printed (no
target).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from experiments import ptq_error

CALIBRATION_GRAPHS = 4
TARGET = 0.02
# Measured before this suite's defaults (calibrated on A only): 0.02-0.41; now at most 0.042 (ChebConv). A bound,
# not the target.
REGRESSION_BOUND = 0.06
# Above the 2 % target with 4 calibration graphs (34 of 37 models are under it on graph B since op outputs no
# integer op reads stay in float and 8-bit ranges reach past the calibration graphs' extremes; they were 5 of 24):
# ChebConv 0.042 and ResGatedGraphConv 0.045 (B's largest activation lies past the widened range: one clipped
# value), GATConv 0.028 (the per-tensor rounding of its last linear output alone costs 1.9 %: two heads are
# averaged after it). Over 8 held-out graphs (``ptq_error --held-out 8``) fewer models stay under 2 % on average:
# README, "8-bit PTQ".
ABOVE_TARGET = frozenset({"ChebConv", "GATConv", "ResGatedGraphConv"})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The MSE grid search is many small ops: on a shared 2-core machine threads only contend (4x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _errors(name: str) -> dict[int, float]:
    return {bits: errors[0] for bits, errors in ptq_error.ptq_errors(name, CALIBRATION_GRAPHS).items()}


@pytest.mark.parametrize(
    "name",
    [
        # not strict: another CPU's float summation order may move a model across the target
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
