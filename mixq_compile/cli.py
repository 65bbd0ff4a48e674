"""The ``mixq-compile`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

import torch


def _synthetic_node_data(seed: int = 0):
    """A planted-partition graph (4 classes) for running the demo without any data set."""
    from .training import NodeData

    gen = torch.Generator().manual_seed(seed)
    n, classes, features = 800, 4, 64
    y = torch.arange(n) % classes
    centers = torch.randn(classes, features, generator=gen)
    x = centers[y] * 0.6 + torch.randn(n, features, generator=gen)
    src = torch.randint(0, n, (6 * n,), generator=gen)
    same = y[torch.randint(0, n, (6 * n,), generator=gen)]
    candidates = torch.randint(0, n // classes, (6 * n,), generator=gen) * classes + same
    dst = torch.where(
        torch.rand(6 * n, generator=gen) < 0.8, candidates - same + y[src], torch.randint(0, n, (6 * n,), generator=gen)
    )
    keep = src != dst
    edge_index = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
    perm = torch.randperm(n, generator=gen)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    masks[0][perm[:160]] = True
    masks[1][perm[160:400]] = True
    masks[2][perm[400:]] = True
    return "synthetic planted partition", NodeData(x, edge_index, y, *masks)


def _demo_data(data_root: str | None):
    root = data_root or os.environ.get("MIXQ_DATA")
    if not root:
        return _synthetic_node_data()
    from .data import load_dataset
    from .training import NodeData

    loaded = load_dataset("Cora", root)
    return "Cora", NodeData.from_pyg(loaded.dataset[0])


def demo(args: argparse.Namespace) -> int:
    """quantize -> search -> freeze -> QAT on Cora (or a synthetic graph), with a site table and BitOPs."""
    import mixq_compile as mq

    from .models import PlanetoidGCN
    from .training import accuracies, train_node

    torch.manual_seed(args.seed)
    name, data = _demo_data(args.data_root)
    epochs = 5 if args.smoke else args.epochs
    classes = int(data.y.max()) + 1
    model = PlanetoidGCN(data.x.shape[1], classes, hidden=args.hidden)
    start = time.perf_counter()
    fp32 = train_node(model, data, epochs=epochs, desc="FP32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, data.inputs, tuple(args.bits))
    train_node(qmodel, data, epochs=epochs, lam=args.lam, desc="search")
    frozen = mq.freeze(qmodel)
    qat = train_node(frozen, data, epochs=epochs, lr=1e-3, weight_decay=0.0, desc="QAT")
    frozen.load_state_dict(qat.best_state)
    elapsed = time.perf_counter() - start
    print(f"\n{name}: N={data.x.shape[0]} E={data.edge_index.shape[1]} F={data.x.shape[1]} classes={classes}")
    print(mq.sites(frozen))
    wa, paper = (mq.bitops(frozen, data.inputs, convention=c) for c in ("wa", "paper"))
    fp_wa, fp_paper = (mq.bitops(model, data.inputs, convention=c) for c in ("wa", "paper"))
    print(f"\n{'':<10}{'test acc':>10}{'avg bits':>10}{'GBitOPs (wa)':>16}{'GBitOPs (paper)':>18}")
    print(f"{'FP32':<10}{fp32.test_at_best_val * 100:>10.2f}{32:>10.2f}{fp_wa.gbitops:>16.3f}{fp_paper.gbitops:>18.3f}")
    print(
        f"{'MixQ':<10}{qat.test_at_best_val * 100:>10.2f}{wa.avg_bits:>10.2f}{wa.gbitops:>16.3f}{paper.gbitops:>18.3f}"
    )
    print(f"final QAT model accuracy (train/val/test): {accuracies(frozen, data)}; wall {elapsed:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixq-compile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="quantize -> search -> freeze -> QAT on Cora (MIXQ_DATA) or a synthetic graph")
    p.add_argument("--data-root", default=None, help="data root with Planetoid/Cora/raw (default: $MIXQ_DATA)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--lam", type=float, default=0.1, help="penalty weight (relative scaling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="5 epochs per phase")
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
