"""The ``mixq-compile`` command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    """quantize -> search -> freeze -> QAT -> export to every backend -> profile (see :mod:`mixq_compile.demo`)."""
    from .demo import run_demo

    run_demo(
        args.data_root or os.environ.get("MIXQ_DATA"),
        epochs=5 if args.smoke else args.epochs,
        hidden=args.hidden,
        bits=tuple(args.bits),
        lam=args.lam,
        seed=args.seed,
        backends=args.backends,
        repeats=3 if args.smoke else args.repeats,
        keep=args.keep,
    )
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse reads ``-1e-8`` (the paper's smallest λ) as an unknown option, since its negative-number pattern
    has no exponent; this one takes any negative float literal as a value. Subparsers inherit the class."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A private attribute of argparse (CPython ≤ 3.13); without it "-1e-8" reads as an option name.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixq-compile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="quantize -> search -> freeze -> QAT -> export -> profile, on Cora ($MIXQ_DATA) or generated CSL graphs",
    )
    p.add_argument("--data-root", default=None, help="data root with Planetoid/Cora/raw (default: $MIXQ_DATA)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--lam", type=float, default=0.1, help="penalty weight (relative scaling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per profile")
    p.add_argument("--keep", type=Path, default=None, help="keep the exported artifacts in this directory")
    p.add_argument("--smoke", action="store_true", help="5 epochs per phase, 3 timed calls")
    p.set_defaults(func=demo)
    _add_experiments(sub)
    return parser


def experiment(args: argparse.Namespace) -> int:
    """Run one of the paper's experiments (see ``mixq_compile.experiments``)."""
    from .experiments import get
    from .experiments.runner import run_experiment

    return run_experiment(get(args.experiment), args)


def _add_experiments(sub) -> None:
    from .experiments import EXPERIMENTS, get
    from .experiments.runner import add_common_arguments

    p = sub.add_parser("experiment", help="run a paper experiment: results/<name>/, resumable sweeps")
    names = p.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name in EXPERIMENTS:
        module = get(name)
        q = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        add_common_arguments(q)
        module.add_arguments(q)
        q.set_defaults(func=experiment)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        from .errors import MixQError

        if isinstance(error, (MixQError, FileNotFoundError, ValueError)):
            print(f"mixq-compile: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
