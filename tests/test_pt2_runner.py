"""Loaded ``.pt2`` programs check their inputs against the program's shape constraints once per input signature."""

from __future__ import annotations

import pytest
import torch
import torch.export._unlift as unlift

from mixq_compile.runtimes.pt2 import VALIDATED_SIGNATURES, _lifted_graph, export_program, load_pt2, save_program


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


class _Weighted(torch.nn.Module):
    """A parameter, a persistent and a non-persistent buffer and a constant tensor: every kind of lifted weight."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.arange(12.0).reshape(4, 3), requires_grad=False)
        self.register_buffer("b", torch.full((3,), 0.5))
        self.register_buffer("n", torch.tensor([1.0, -1.0, 2.0]), persistent=False)
        self.c = torch.tensor([3.0, 0.0, 1.0])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.p + self.b * self.n, y * self.c


class _Counting(torch.nn.Module):
    """Writes to its own buffer on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.calls.add_(1)
        return (x + self.calls,)


class _Nested(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        return ((x + 1, x * 2),)


def _saved(program: torch.export.ExportedProgram, path) -> torch.export.ExportedProgram:
    save_program(program, path)
    return torch.export.load(path)


def test_the_program_graph_runs_with_every_kind_of_weight(tmp_path):
    inputs = (torch.randn(5, 4), torch.randn(6, 3))
    program = _saved(export_program(_Weighted(), inputs), tmp_path / "w.pt2")
    assert _lifted_graph(program) is not None
    runner = load_pt2(tmp_path / "w.pt2")
    for x, y in (inputs, (torch.randn(2, 4), torch.randn(1, 3))):
        expected = program.module()(x, y)
        for _ in range(2):  # checked, then the lifted graph
            got = runner(x, y)
            assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("functional", [False, True])
def test_a_program_that_writes_its_buffer_writes_it_on_every_call(tmp_path, functional):
    # exported as is, the write stays an in-place op on the lifted buffer, the tensor the module holds too; after
    # functionalization it is an output the module call writes back, so the lifted graph must not be used
    program = export_program(_Counting(), (torch.zeros(3),))
    program = _saved(program.run_decompositions() if functional else program, tmp_path / "c.pt2")
    assert (_lifted_graph(program) is None) == functional
    runner = load_pt2(tmp_path / "c.pt2")
    assert [float(runner(torch.zeros(3))[0][0]) for _ in range(3)] == [1.0, 2.0, 3.0]  # each call sees the last write


def test_a_program_with_nested_outputs_runs_as_a_module(tmp_path):
    program = _saved(export_program(_Nested(), (torch.ones(2),)), tmp_path / "n.pt2")
    assert _lifted_graph(program) is None
    runner = load_pt2(tmp_path / "n.pt2")
    for _ in range(2):
        ((plus, times),) = runner(torch.ones(2))
        assert torch.equal(plus, torch.full((2,), 2.0)) and torch.equal(times, torch.full((2,), 2.0))
