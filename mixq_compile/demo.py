"""``mixq-compile demo``: the whole product in one command.

quantize → MixQ search → freeze → QAT → export to every available backend → check each artifact's accuracy →
profile (latency vs PyG FP32 eager) → one final table. Runs on Cora (node classification, data root from
``--data-root`` / ``$MIXQ_DATA``) or, with no data root, on CSL graphs generated in memory (graph classification).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import mixq_compile as mq

from .guard import freeze_searched
from .runtimes import BACKENDS, available_backends
from .tasks import Task, graph_task, load_task
from .workflow import accuracy_gap_warning


def demo_task(root: str | None, hidden: int, seed: int) -> tuple[Task, nn.Module]:
    """Cora with the paper's GCN when a data root is given, else CSL graphs generated in memory (no download)."""
    from .data import generate_csl
    from .models import CSLGCN, PlanetoidGCN

    if root:
        task = load_task("Cora", root)
        return task, PlanetoidGCN(task.num_features, task.num_classes, hidden=hidden)
    task = graph_task(generate_csl(seed=seed), seed=seed, batch_size=8, lr_scale=0.5, weight_decay=0.0)
    task.name = "CSL generated"
    return task, CSLGCN(task.num_features, task.num_classes, hidden=min(hidden, 150))


@dataclass
class DemoModels:
    """What the demo's training path produced: the task, the FP32 model, the QAT model and the guard's log."""

    task: Task
    fp32: nn.Module
    frozen: nn.Module
    guard_log: list[str]


def train_demo(data_root: str | None, *, epochs: int, hidden: int, bits: tuple[int, ...], lam: float,
               seed: int) -> DemoModels:  # fmt: skip
    """FP32 training, MixQ search, the guard, freeze and QAT: the demo up to export (also what
    ``experiments/demo_seeds.py`` repeats over seeds)."""
    torch.manual_seed(seed)
    task, model = demo_task(data_root, hidden, seed)
    print(f"[1/6] FP32 training on {task.name}")
    model.load_state_dict(task.train(model, epochs, 0.0, 0.01, 2e-4, "FP32").best_state)
    fp32_model = model.eval()
    print(f"[2/6] quantize (candidates {bits}) and MixQ search (λ={lam})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(fp32_model, task.inputs, bits)
    task.train(qmodel, epochs, lam, 0.01, 2e-4, "search")  # bits from the last epoch, as the paper (not best-val)
    print(mq.sites(qmodel))  # the searched probabilities, before freezing fixes them
    print("[3/6] the searched bit-widths on the FP32 weights (raising any site that costs validation accuracy);")
    print("      fine-tune (QAT)")
    frozen, log = freeze_searched(fp32_model, qmodel, task.inputs, task.validation)
    print("\n".join(f"      {line}" for line in log))
    frozen.load_state_dict(task.train(frozen, epochs, 0.0, 1e-3, 0.0, "QAT").best_state)
    return DemoModels(task, fp32_model, frozen.eval(), log)


def run_demo(
    data_root: str | None,
    *,
    epochs: int,
    hidden: int,
    bits: tuple[int, ...],
    lam: float,
    seed: int,
    backends: list[str] | None = None,
    repeats: int = 20,
    keep: Path | None = None,
) -> list[dict]:
    """Run the pipeline; print progress, the site table and the final table; return the table rows."""
    started = time.perf_counter()
    trained = train_demo(data_root, epochs=epochs, hidden=hidden, bits=bits, lam=lam, seed=seed)
    task, fp32_model, frozen = trained.task, trained.fp32, trained.frozen
    usable, skipped = available_backends(backends or list(BACKENDS))
    for name, reason in skipped.items():
        print(f"skipping backend {name}: {reason}")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="mixq_demo_"))
    costs = {c: mq.bitops(frozen, task.inputs, convention=c) for c in ("wa", "paper")}
    fp_costs = mq.bitops(fp32_model, task.inputs, convention="paper")
    eager = mq.profile(fp32_model, task.inputs, warmup=3, repeats=repeats, name="PyG FP32 eager")
    rows = [
        _row("PyG FP32 eager", "fp32", task.accuracy(fp32_model), 32.0, fp_costs.gbitops, eager, eager),
        _row(
            "QAT model (fake-quant)",
            "simulated",
            task.accuracy(frozen),
            costs["wa"].avg_bits,
            costs["paper"].gbitops,
            None,
            eager,
        ),
    ]
    try:
        for i, (label, name, options) in enumerate(usable):
            print(f"[4/6] export to {label} ({i + 1}/{len(usable)}), [5/6] load, check accuracy, [6/6] profile")
            for precision, model in (("integer", frozen), ("fp32", fp32_model)):
                folder = work / f"{label.replace(':', '_')}_{precision}"
                path = mq.export(model, task.inputs, folder, backend=name, backend_options=options)
                artifact = mq.load_artifact(path)  # the defaults: self-checked on this CPU, structure cached
                report = mq.profile(artifact, task.inputs, warmup=3, repeats=repeats, name=f"{label} {precision}")
                paths = ", ".join(f"{k}: {v}" for k, v in artifact.kernel_paths.items())
                print(f"      {label} {precision} kernels on this CPU: {paths or 'backend defaults'}")
                avg = artifact.manifest["avg_bits"]
                gbit = artifact.manifest["bitops"]["paper"] / 1e9
                rows.append(_row(f"{label} artifact", precision, task.accuracy(artifact), avg, gbit, report, eager))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    _print_table(rows)
    warning = accuracy_gap_warning(rows[0]["test_acc"], rows[1]["test_acc"])
    if warning:
        print(warning)
    print(f"CPU: {mq.cpu.summary()}")
    print(f"wall time {time.perf_counter() - started:.1f} s" + (f"; artifacts in {work}" if keep else ""))
    return rows


def _row(what, precision, acc, avg_bits, gbitops, report, eager) -> dict:
    return {
        "what": what,
        "precision": precision,
        "test_acc": acc * 100,
        "avg_bits": avg_bits,
        "gbitops_paper": gbitops,
        "median_ms": report.median_ms if report else None,
        "speedup_vs_eager": eager.median_ms / report.median_ms if report else None,
    }


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'':<26}{'precision':<11}{'test acc':>9}{'avg bits':>9}{'GBitOPs':>10}{'median ms':>11}{'vs eager':>9}")
    for r in rows:
        ms = f"{r['median_ms']:.2f}" if r["median_ms"] is not None else "-"
        speed = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] is not None else "-"
        print(f"{r['what']:<26}{r['precision']:<11}{r['test_acc']:>9.2f}{r['avg_bits']:>9.2f}"
              f"{r['gbitops_paper']:>10.3f}{ms:>11}{speed:>9}")  # fmt: skip
