"""Fixtures for every test (helpers to import live in ``helpers.py``, the model zoo in ``zoo.py``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
