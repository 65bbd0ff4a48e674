"""Loaded ``.pt2`` programs check their inputs against the program's shape constraints once per input signature."""

from __future__ import annotations

import pytest
import torch
import torch.export._unlift as unlift

from mixq_compile.runtimes.pt2 import VALIDATED_SIGNATURES, export_program, load_pt2, save_program


class _Project(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.arange(12.0).reshape(4, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x @ self.w,)


@pytest.fixture
def runner(tmp_path):
    path = tmp_path / "p.pt2"
    save_program(export_program(_Project(), (torch.ones(5, 4),)), path)
    return load_pt2(path)


@pytest.fixture
def checks(monkeypatch):
    calls = []
    check = unlift._check_input_constraints_for_module

    def counted(*args, **kwargs):
        calls.append(tuple(args[1][0].shape))
        return check(*args, **kwargs)

    monkeypatch.setattr(unlift, "_check_input_constraints_for_module", counted)
    return calls


def test_the_constraint_check_runs_once_per_signature(runner, checks):
    x = torch.randn(5, 4)
    for _ in range(3):
        (out,) = runner(x)
        torch.testing.assert_close(out, x @ torch.arange(12.0).reshape(4, 3))
    assert checks == [(5, 4)]
    runner(torch.randn(7, 4))
    runner(x)
    assert checks == [(5, 4), (7, 4)]


def test_a_signature_that_fails_the_check_is_checked_again(runner, checks):
    for _ in range(2):  # the width is static in the program: refused on every call, never remembered as valid
        with pytest.raises(RuntimeError, match=r"shape\[1\] to be equal to 4"):
            runner(torch.randn(5, 6))
    assert len(checks) == 2
    runner(torch.randn(5, 4))


def test_the_remembered_signatures_are_bounded(runner, checks):
    for rows in range(2, VALIDATED_SIGNATURES + 3):
        runner(torch.randn(rows, 4))
    runner(torch.randn(2, 4))  # the oldest was forgotten: checked again
    runner(torch.randn(VALIDATED_SIGNATURES + 2, 4))  # the newest was not
    assert len(checks) == VALIDATED_SIGNATURES + 2
