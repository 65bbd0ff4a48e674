"""Fixtures for every test (helpers to import live in ``helpers.py``, the model zoo in ``zoo.py``)."""

from __future__ import annotations

import pytest
import torch

from mixq_compile import cpu
from mixq_compile.ops import native


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[*cpu.LEVELS, "aten"])
def kernels(request, monkeypatch):
    """Runs a test with the native kernels of every level this CPU runs (``MIXQ_ISA``: portable, AVX2, AVX-512,
    VNNI), then with them switched off (the ATen code used without a C compiler). Use it with
    ``pytestmark = pytest.mark.usefixtures("kernels")``."""
    if request.param == "aten":
        monkeypatch.setattr(native, "library", lambda: None)
        return "aten"
    if cpu.LEVELS.index(request.param) > cpu.LEVELS.index(cpu.native_level()):
        pytest.skip(f"this CPU ({cpu.model()}) cannot run the {request.param} kernels ({cpu.native_level()})")
    monkeypatch.setenv(cpu.ENV, request.param)
    if native.unavailable_reason() is not None:
        pytest.skip(f"native kernels unavailable here: {native.unavailable_reason()}")
    return "native"


@pytest.fixture
def pack_every_table(monkeypatch):
    """Narrow-code aggregations read every table packed (by default only large tables of long rows are:
    :func:`mixq_compile.ops.packed.packing_pays`), so that small test graphs exercise the packed kernels."""
    from mixq_compile.ops import packed

    monkeypatch.setattr(packed, "PACK_FROM_BYTES", 0)
    monkeypatch.setattr(packed, "PACK_FROM_ROW_BYTES", 0)
