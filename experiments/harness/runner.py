"""Runs one experiment: build its configs, sweep them resumably, summarise, plot, print, write results.

Every experiment module (see :mod:`experiments`) provides ``add_arguments(parser)``,
``configs(args)``, ``run(config)`` (module-level, so worker processes can import it), ``summarize(records)`` and
``plot(rows, records, out_dir)``; optionally ``unavailable(args)`` returning a reason to skip.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from experiments import CHECKOUT, RESULTS
from experiments.harness import stats
from experiments.harness.sweep import EXECUTORS, read_records, run_sweep


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="few epochs, 1 run, tiny subset (for tests/CI)")
    parser.add_argument("--data-root", default=None, help="data sets root (default: $MIXQ_DATA)")
    parser.add_argument("--runs", type=int, default=None, help="runs (seeds) per setting (default: the paper's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run; run i uses seed + i")
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default: {RESULTS}/<experiment>)")
    parser.add_argument(
        "--summarize-only", action="store_true", help="run nothing: summarise and plot the runs finished so far"
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except OSError:
        return None


def out_dir(name: str, args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    return RESULTS / (f"{name}-smoke" if args.smoke else name)


def run_experiment(module, args: argparse.Namespace) -> int:
    """Run ``module`` with parsed ``args``; returns a process exit code (0 also when skipped with a reason)."""
    name = module.NAME
    if args.data_root:
        os.environ["MIXQ_DATA"] = str(args.data_root)
    reason = module.unavailable(args) if hasattr(module, "unavailable") else None
    if reason:
        print(f"experiment {name}: skipped: {reason}")
        return 0
    out = out_dir(name, args)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        _sweep(module, args, out)
    all_ok = [r for r in read_records(out / "runs.jsonl") if r["status"] == "ok"]
    rows = module.summarize(_latest(all_ok))
    stats.write_table(rows, out)
    module.plot(rows, _latest(all_ok), out)
    print(stats.format_table(rows, getattr(module, "TABLE_COLUMNS", None)))
    print(f"results in {out}")
    if not args.smoke and args.out is None:
        from experiments.harness.results_md import write_results_md

        write_results_md()
    return 0


def _sweep(module, args: argparse.Namespace, out: Path) -> None:
    """Build the configs, record the invocation, run what is not finished yet and time the sweep."""
    configs = module.configs(args)
    if hasattr(module, "prepare"):
        module.prepare(configs)  # load data once in this process, so workers never race on the cache
    meta = {
        "experiment": module.NAME,
        "argv": {k: _portable(v) for k, v in vars(args).items() if k != "func"},
        "runs_total": len(configs),
        "git_commit": _git_commit(),
        "configs": configs,
    }
    with (out / "invocations.jsonl").open("a") as f:
        f.write(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}, default=str) + "\n")
    start = time.perf_counter()
    records = run_sweep(
        module.run,
        configs,
        out / "runs.jsonl",
        executor=args.executor,
        workers=args.workers,
        threads=args.threads,
        desc=module.NAME,
    )
    elapsed = time.perf_counter() - start
    with (out / "timing.jsonl").open("a") as f:
        f.write(
            json.dumps({"configs": len(configs), "workers": args.workers, "elapsed_s": elapsed, **meta["argv"]}) + "\n"
        )
    print(f"\n{module.NAME}: {len(records)} of {len(configs)} requested runs finished; sweep wall {elapsed:.1f} s")


def _portable(value: object) -> object:
    """An argument as recorded in results files: paths relative to the checkout, and an
    absolute path outside it by its last component only, so committed results name no machine's folders."""
    if not isinstance(value, str | Path) or not os.path.isabs(value):
        return str(value) if isinstance(value, Path) else value
    path = Path(value)
    try:
        return str(path.relative_to(CHECKOUT))
    except ValueError:
        return f"<outside the checkout>/{path.name}"


def _latest(records: list[dict]) -> list[dict]:
    """One record per key (the latest), so a config finished twice counts once."""
    by_key = {r["key"]: r for r in records}
    return list(by_key.values())


def script_main(name: str) -> None:
    """``python -m experiments.NAME [options]``: the same as ``mixq-compile experiment NAME [options]``."""
    from mixq_compile.cli import main

    sys.exit(main(["experiment", name, *sys.argv[1:]]))
