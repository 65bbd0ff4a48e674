"""Table 2/6: the Table-1 protocol with Degree-Quant enabled through ``QuantConfig(degree_quant=DegreeQuant())``
(protection probability 0 to 0.1 by in-degree CDF, 1st-99th percentile activation ranges; MIXQ_METHOD.md §5.3)."""

from __future__ import annotations

import argparse
import functools

from experiments import planetoid
from experiments.harness import paper

NAME = "planetoid_dq"
TABLE_COLUMNS = planetoid.TABLE_COLUMNS
METRICS = planetoid.METRICS

run = planetoid.run
add_arguments = planetoid.add_arguments


def configs(args: argparse.Namespace) -> list[dict]:
    return [c for c in planetoid.configs(args, name=NAME, degree_quant=True) if c["setting"] == "mixq_dq"]


summarize = functools.partial(planetoid.summarize, published=paper.PLANETOID_DQ)
plot = functools.partial(planetoid.plot, published=paper.PLANETOID_DQ, name=NAME)


if __name__ == "__main__":
    from experiments.harness.runner import script_main

    script_main(NAME)
