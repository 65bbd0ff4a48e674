"""The ``mixq-compile`` command line: quantize your own model, export it, profile and inspect the result.

  mixq-compile quantize my_models:make_gcn --dataset Cora --out gcn_mixq
  mixq-compile export gcn_mixq --backend onnx --out gcn_onnx
  mixq-compile profile gcn_onnx
  mixq-compile inspect gcn_onnx

Errors are printed as one message naming the problem and the fix (exit code 2); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _bit_width(text: str) -> int:
    from .quant.spec import check_bits

    value = int(text)
    try:
        check_bits(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def _backend(text: str) -> str:
    from .runtimes import BACKENDS

    name, _, flag = text.partition(":")
    if name not in BACKENDS or flag not in ("", "aot_inductor"):
        raise argparse.ArgumentTypeError(
            f"unknown backend {text!r}; choose from {', '.join(sorted(BACKENDS))} (or torch:aot_inductor)"
        )
    return text


def _first_sentence(doc: str | None) -> str:
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    match = re.match(r"(.{20,}?\.)(?=\s+[A-Z`]|$)", paragraph)  # 20+: "Fig. 6:" is not a sentence
    return match.group(1) if match else paragraph


class _Parser(argparse.ArgumentParser):
    """argparse reads ``-1e-8`` (the paper's smallest λ) as an unknown option, since its negative-number pattern
    has no exponent; this one takes any negative float literal as a value. Subparsers inherit the class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        # A private attribute of argparse (CPython ≤ 3.13); without it "-1e-8" reads as an option name.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, help="data sets root in PyG's raw layout (default: $MIXQ_DATA)")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="quantize -> search -> freeze -> QAT -> export -> profile, on Cora ($MIXQ_DATA) or generated CSL graphs",
    )
    _data_root(p)
    p.add_argument("--epochs", type=_positive_int, default=50, help="epochs of each phase (FP32, search, QAT)")
    p.add_argument("--hidden", type=_positive_int, default=128, help="hidden channels of the GCN")
    p.add_argument("--bits", type=_bit_width, nargs="+", default=[2, 4, 8], help="candidate bit-widths")
    p.add_argument("--lam", type=_finite, default=0.1, help="penalty weight λ (relative scaling)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--backends", type=_backend, nargs="+", default=None, help="default: every backend available")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed calls per profile")
    p.add_argument("--keep", type=Path, default=None, help="keep the exported artifacts in this directory")
    p.add_argument("--smoke", action="store_true", help="5 epochs per phase, 3 timed calls")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.data_root or os.environ.get("MIXQ_DATA"), epochs=5 if args.smoke else args.epochs,
             hidden=args.hidden, bits=tuple(args.bits), lam=args.lam, seed=args.seed, backends=args.backends,
             repeats=3 if args.smoke else args.repeats, keep=args.keep)  # fmt: skip
    return 0


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="train (optional), search bit-widths, freeze and fine-tune your own model")
    p.add_argument("factory", help="MODULE:FUNCTION or FILE.py:FUNCTION; called as f(in_channels=, out_channels=)")
    p.add_argument("--dataset", required=True, help="Cora, CiteSeer, PubMed, MUTAG, PROTEINS, IMDB-BINARY, …, CSL")
    _data_root(p)
    p.add_argument("--out", type=Path, required=True, help="directory of the saved model (mixq_compile.save)")
    p.add_argument("--bits", type=_bit_width, nargs="+", default=[2, 4, 8], help="candidate bit-widths")
    objective = p.add_mutually_exclusive_group()
    objective.add_argument("--lam", type=_finite, default=0.1, help="penalty weight λ (relative scaling)")
    budget_help = "BitOPs budget (wa): a count, or a fraction of the all-highest-bits cost if ≤ 1"
    objective.add_argument("--budget", type=_positive, default=None, help=budget_help)
    p.add_argument("--weights", default=None, help="a trained FP32 state_dict (.pt); skips FP32 training")
    p.add_argument("--fp32-epochs", type=_positive_int, default=200, help="FP32 training epochs")
    p.add_argument("--epochs", type=_positive_int, default=100, help="search epochs")
    p.add_argument("--qat-epochs", type=_count, default=50, help="QAT epochs after freezing (0: none)")
    p.add_argument("--lr", type=_positive, default=0.01, help="learning rate (QAT uses a tenth)")
    p.add_argument("--weight-decay", type=_finite, default=5e-4, help="weight decay of FP32 training and search")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--json", type=Path, default=None, help="also write the summary to this JSON file")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from .workflow import QuantizeSettings, quantize_run

    settings = QuantizeSettings(
        factory=args.factory, dataset=args.dataset, bits=tuple(args.bits), lam=args.lam, budget=args.budget,
        fp32_epochs=args.fp32_epochs, epochs=args.epochs, qat_epochs=args.qat_epochs, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, weights=args.weights,
    )  # fmt: skip
    summary = quantize_run(settings, args.out, data_root=args.data_root)
    _write_json(args.json, summary)
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model saved by `quantize` to a deployable artifact")
    p.add_argument("saved", type=Path, help="directory written by `mixq-compile quantize` (or mixq_compile.save)")
    p.add_argument("--backend", type=_backend, default="torch", help="torch, onnx, tvm, bitblas or torch:aot_inductor")
    p.add_argument("--out", type=Path, required=True, help="artifact directory")
    p.add_argument("--dataset", default=None, help="example inputs from this data set (default: the recorded one)")
    _data_root(p)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier artifact at --out")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .workflow import export_run

    export_run(args.saved, args.backend, args.out, data_root=args.data_root, dataset=args.dataset,
               overwrite=args.overwrite)  # fmt: skip
    return 0


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="latency, BitOPs and accuracy of an artifact on this CPU")
    p.add_argument("artifact", type=Path, help="artifact directory written by `export`")
    p.add_argument("--dataset", default=None, help="inputs from this data set (default: the recorded one)")
    _data_root(p)
    p.add_argument("--warmup", type=_count, default=10, help="untimed calls first")
    p.add_argument("--repeats", type=_positive_int, default=50, help="timed calls")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    p.set_defaults(func=_profile)


def _profile(args: argparse.Namespace) -> int:
    from .workflow import profile_run

    result = profile_run(args.artifact, dataset=args.dataset, data_root=args.data_root, warmup=args.warmup,
                         repeats=args.repeats)  # fmt: skip
    _write_json(args.json, result)
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="sites, bits, BitOPs, backend, CPU and checksums of a saved model or artifact")
    p.add_argument("path", type=Path, help="a saved model or an artifact directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from .workflow import inspect_path, print_inspection

    info = inspect_path(args.path)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print_inspection(info)
    return 0


def _write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=1, default=str))
        print(f"wrote {path}")


def _experiments_package():
    """The checkout's ``experiments`` package, or None where this install has no checkout beside it.

    The paper experiments are not part of the installed package: they live in the ``experiments/`` folder of a
    checkout. An editable install finds it next to ``mixq_compile/``; otherwise the working directory is tried."""
    import importlib

    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "experiments" / "__init__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            try:
                return importlib.import_module("experiments")
            except ImportError:
                continue
    return None


def _experiment(args: argparse.Namespace) -> int:
    from experiments import get
    from experiments.harness.runner import run_experiment

    return run_experiment(get(args.experiment), args)


def _no_experiments(args: argparse.Namespace) -> int:
    raise ImportError(
        "the paper experiments live in the experiments/ folder of a checkout of mixq_compile, not in the installed "
        "package: run `mixq-compile experiment ...` from the root of a checkout"
    )


def _add_experiments(sub) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment: results/<name>/, resumable sweeps (from a checkout)")
    if _experiments_package() is None:
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_no_experiments)
        return
    from experiments import EXPERIMENTS, get
    from experiments.harness.runner import add_common_arguments

    names = p.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name in EXPERIMENTS:
        module = get(name)
        summary = _first_sentence(module.__doc__)
        q = names.add_parser(name, help=summary, description=module.__doc__)
        add_common_arguments(q)
        module.add_arguments(q)
        q.set_defaults(func=_experiment)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = _Parser(prog="mixq-compile", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mixq-compile {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_quantize, _add_export, _add_profile, _add_inspect, _add_experiments):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("mixq-compile: interrupted (finished phases are checkpointed; run again to resume)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        from .errors import MixQError

        expected = isinstance(error, (MixQError, ValueError, TypeError, OSError, ImportError))
        if args.debug or not expected:
            traceback.print_exc()
            if not expected:
                return 1
        print(f"mixq-compile: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
