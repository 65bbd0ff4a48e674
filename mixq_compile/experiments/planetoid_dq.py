"""Table 2/6: the Table-1 protocol with Degree-Quant enabled through ``QuantConfig(degree_quant=True)``.

The option is being added on another branch; until it exists this experiment is skipped with a message.
"""

from __future__ import annotations

import argparse
import functools

from . import paper, planetoid
from .common import supports_degree_quant

NAME = "planetoid_dq"
TABLE_COLUMNS = planetoid.TABLE_COLUMNS
METRICS = planetoid.METRICS

run = planetoid.run
add_arguments = planetoid.add_arguments


def unavailable(args: argparse.Namespace) -> str | None:
    if supports_degree_quant():
        return None
    return "QuantConfig has no `degree_quant` option in this build yet (it is being added on another branch)"


def configs(args: argparse.Namespace) -> list[dict]:
    return [c for c in planetoid.configs(args, name=NAME, degree_quant=True) if c["setting"] == "mixq_dq"]


summarize = functools.partial(planetoid.summarize, published=paper.PLANETOID_DQ)
plot = functools.partial(planetoid.plot, published=paper.PLANETOID_DQ, name=NAME)
