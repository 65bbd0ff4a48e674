"""The steps behind ``mixq-compile quantize | export | profile | inspect``, as functions the CLI and tests call.

``quantize_run`` trains (FP32 if no weights are given) → MixQ search → freeze (→ fit a hard budget) → QAT and saves
the frozen model with :func:`mixq_compile.save`, recording the factory and data set so ``export`` needs only the
directory. Each finished phase is checkpointed next to the output (``.<out>.partial/``), so a killed run started
again with the same arguments resumes after the last finished phase.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import mixq_compile as mq

from .atomic import check_replaceable
from .factory import build, record
from .guard import freeze_searched
from .saved_model import META_FILE, SavedModelError, read_meta
from .tasks import load_task

#: a warning is printed when quantization costs more test accuracy than this (points)
ACCURACY_GAP_WARNING = 2.0


@dataclass(frozen=True)
class QuantizeSettings:
    """What ``mixq-compile quantize`` was asked to do (also the resume key of its checkpoints)."""

    factory: str
    dataset: str
    bits: tuple[int, ...] = (2, 4, 8)
    lam: float = 0.1
    budget: float | None = None
    fp32_epochs: int = 200
    epochs: int = 100
    qat_epochs: int = 50
    lr: float = 0.01
    weight_decay: float = 5e-4
    seed: int = 0
    weights: str | None = None
    factory_kwargs: tuple[tuple[str, object], ...] = ()

    def key(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def _factory_kwargs(settings: QuantizeSettings, task) -> dict:
    return {"in_channels": task.num_features, "out_channels": task.num_classes, **dict(settings.factory_kwargs)}


def _load_weights(model: torch.nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"cannot read FP32 weights from {path}: {error} (expected a saved state_dict)") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"the weights in {path} do not fit the factory's model: {error}") from error


def quantize_run(settings: QuantizeSettings, out: Path, *, data_root: str | None = None, overwrite: bool = True):
    """Run the pipeline and save the frozen, fine-tuned model to ``out``; returns the summary dict."""
    out = Path(out)
    check_replaceable(out, META_FILE, "saved mixq_compile model", overwrite, SavedModelError)  # before any training
    torch.manual_seed(settings.seed)
    task = load_task(settings.dataset, data_root, seed=settings.seed)
    kwargs = _factory_kwargs(settings, task)
    origin = record(settings.factory)
    model = build(origin["factory"], kwargs, origin["factory_path"])
    partial = out.with_name(f".{out.name}.partial")
    checkpoint = _Checkpoint(partial, settings.key())

    fp32_state = checkpoint.load_state("fp32")
    if fp32_state is not None:
        model.load_state_dict(fp32_state)
        print("[1/4] FP32 weights: resumed from the checkpoint")
    elif settings.weights:
        _load_weights(model, settings.weights)
        print(f"[1/4] FP32 weights: {settings.weights}")
    else:
        print(f"[1/4] FP32 training on {task.name} ({settings.fp32_epochs} epochs)")
        result = task.train(model, settings.fp32_epochs, 0.0, settings.lr, settings.weight_decay, "FP32")
        model.load_state_dict(result.best_state)
    checkpoint.save_state("fp32", model.state_dict())
    model.eval()
    fp32_acc = task.accuracy(model)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searched = checkpoint.load_model("search", model)
        if searched is None:
            objective = f"budget {settings.budget:g}" if settings.budget is not None else f"λ={settings.lam:g}"
            print(f"[2/4] MixQ search over {settings.bits} ({objective}, {settings.epochs} epochs)")
            searched = mq.quantize(model, task.inputs, settings.bits)
            lam = 1.0 if settings.budget is not None else settings.lam  # the budget hinge at full weight
            task.train(searched, settings.epochs, lam, settings.lr, settings.weight_decay, "search", settings.budget)
            checkpoint.save_model("search", searched)
        else:
            print("[2/4] MixQ search: resumed from the checkpoint")
    print(mq.sites(searched))
    # a budget is a hard limit: the accuracy guard must not raise bits past it
    budget_bits = mq.fit_budget(searched, settings.budget) if settings.budget is not None else None
    frozen, log = freeze_searched(model, searched, task.inputs, task.validation, bits=budget_bits)
    print("\n".join(f"      {line}" for line in log))
    print(f"[3/4] freeze at {_mean(frozen.chosen_bits()):.2f} mean bits; QAT ({settings.qat_epochs} epochs)")
    if settings.qat_epochs > 0:
        result = task.train(frozen, settings.qat_epochs, 0.0, settings.lr * 0.1, 0.0, "QAT")
        frozen.load_state_dict(result.best_state)
    frozen.eval()
    costs = {c: mq.bitops(frozen, task.inputs, convention=c) for c in ("wa", "paper")}
    summary = {
        "dataset": task.name,
        "fp32_test_acc": fp32_acc * 100,
        "mixq_test_acc": task.accuracy(frozen) * 100,
        "avg_bits": costs["wa"].avg_bits,
        "gbitops_wa": costs["wa"].gbitops,
        "gbitops_paper": costs["paper"].gbitops,
        "model_bytes": costs["wa"].model_bytes,
        "bits": frozen.chosen_bits(),
    }
    metadata = {**origin, "factory_kwargs": kwargs, "dataset": task.name, "seed": settings.seed,
                "settings": settings.key(), "summary": summary}  # fmt: skip
    print(f"[4/4] save to {out}")
    mq.save(frozen, out, overwrite=overwrite, metadata=metadata)
    shutil.rmtree(partial, ignore_errors=True)
    _print_summary(summary)
    return summary


def _mean(bits: dict) -> float:
    return sum(bits.values()) / max(len(bits), 1)


def _print_summary(summary: dict) -> None:
    print(f"\n{'':<16}{'test acc':>9}{'avg bits':>9}{'GBitOPs (paper)':>17}{'model KiB':>11}")
    print(f"{'FP32':<16}{summary['fp32_test_acc']:>9.2f}{32.0:>9.2f}{'':>17}{'':>11}")
    print(f"{'MixQ after QAT':<16}{summary['mixq_test_acc']:>9.2f}{summary['avg_bits']:>9.2f}"
          f"{summary['gbitops_paper']:>17.3f}{summary['model_bytes'] / 1024:>11.1f}")  # fmt: skip
    warning = accuracy_gap_warning(summary["fp32_test_acc"], summary["mixq_test_acc"])
    if warning:
        print(warning)


def accuracy_gap_warning(fp32_acc: float, quantized_acc: float) -> str | None:
    """A warning when quantization costs more than :data:`ACCURACY_GAP_WARNING` points (accuracies in %)."""
    gap = fp32_acc - quantized_acc
    if gap <= ACCURACY_GAP_WARNING:
        return None
    return (
        f"warning: quantization costs {gap:.1f} points of test accuracy (> {ACCURACY_GAP_WARNING}): the search "
        f"chose too few bits for some site. Lower λ (--lam), give a budget (--budget), drop 2 from --bits, or "
        f"train longer (--epochs / --qat-epochs)"
    )


class _Checkpoint:
    """Phase checkpoints of one quantize run, valid only for the same settings."""

    def __init__(self, folder: Path, key: dict) -> None:
        self.folder = folder
        stamp = folder / "settings.json"
        if stamp.is_file() and json.loads(stamp.read_text()) != key:
            print(f"note: {folder} holds checkpoints of other settings; starting over")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(key, indent=1))

    def load_state(self, phase: str) -> dict | None:
        path = self.folder / f"{phase}.pt"
        return torch.load(path, weights_only=True) if path.is_file() else None

    def save_state(self, phase: str, state: dict) -> None:
        staging = self.folder / f".{phase}.pt.tmp"
        torch.save(state, staging)
        staging.replace(self.folder / f"{phase}.pt")

    def load_model(self, phase: str, model: torch.nn.Module):
        path = self.folder / phase
        return mq.load(path, model) if (path / "mixq.json").is_file() else None

    def save_model(self, phase: str, qmodel) -> None:
        mq.save(qmodel, self.folder / phase)


def saved_task_inputs(meta: dict, dataset: str | None, data_root: str | None):
    """The task of a saved model or artifact: ``dataset`` if given, else the one recorded at save/export."""
    name = dataset or meta.get("metadata", {}).get("dataset")
    if not name:
        raise ValueError("no data set is recorded for this model or artifact: pass --dataset NAME")
    return load_task(name, data_root, seed=meta.get("metadata", {}).get("seed", 0))


def export_run(saved: Path, backend: str, out: Path, *, data_root: str | None = None, dataset: str | None = None,
               overwrite: bool = False) -> Path:  # fmt: skip
    """Export a model saved by ``quantize`` to ``backend`` ("name" or "name:flag", e.g. "torch:aot_inductor")."""
    meta = read_meta(saved)
    if not meta.get("frozen"):
        raise ValueError(f"{saved} holds a model that is still searching (mixed); freeze it before exporting")
    task = saved_task_inputs(meta, dataset, data_root)
    frozen = mq.load(saved).eval()
    name, _, flag = backend.partition(":")
    options = {flag: True} if flag else None
    path = mq.export(frozen, task.inputs, out, backend=name, backend_options=options, overwrite=overwrite,
                     metadata={"dataset": task.name, "source": str(Path(saved).resolve())})  # fmt: skip
    artifact = mq.load_artifact(path)
    print(f"exported {saved} to {path} ({name}); self-check on {mq.cpu.summary()}: passed")
    print(f"kernels here: {artifact.kernel_paths or 'backend defaults'}; accuracy {task.accuracy(artifact) * 100:.2f}")
    return path


def profile_run(artifact_path: Path, *, dataset: str | None = None, data_root: str | None = None,
                warmup: int = 10, repeats: int = 50) -> dict:  # fmt: skip
    """Latency, BitOPs and (where the data set has labels) accuracy of an artifact; returns a JSON-able dict."""
    artifact = mq.load_artifact(artifact_path)
    task = saved_task_inputs(artifact.manifest, dataset, data_root)
    report = mq.profile(artifact, task.inputs, warmup=warmup, repeats=repeats)
    result = {**report.to_dict(), "dataset": task.name, "test_acc": task.accuracy(artifact) * 100}
    print(report)
    print(f"test accuracy on {task.name}: {result['test_acc']:.2f}")
    return result


def inspect_path(path: Path) -> dict:
    """What a saved model or an artifact holds (verified: checksums and manifest digest for artifacts)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        from .artifact import read_manifest

        _, manifest = read_manifest(path)
        keys = ("backend", "precision", "requantization", "site_bits", "float_ops", "bitops", "avg_bits",
                "model_bytes", "cpu", "kernel_paths", "selfcheck", "versions", "files", "metadata",
                "guards")  # fmt: skip
        return {"kind": "artifact", "path": str(path), **{k: manifest.get(k) for k in keys}}
    meta = read_meta(path)
    return {"kind": "saved model", "path": str(path), "frozen": meta["frozen"], "bits": meta["bits"],
            "sites": meta["plan"]["sites"], "inputs": meta["inputs"], "metadata": meta.get("metadata", {})}  # fmt: skip


def print_inspection(info: dict) -> None:
    print(f"{info['kind']}: {info['path']}")
    if info["kind"] == "artifact":
        print(f"  backend {info['backend']}, precision {info['precision']}, requantization {info['requantization']}")
        print(f"  exported on {info['cpu'].get('model')} ({info['cpu'].get('level')}); kernels {info['kernel_paths']}")
        print(f"  BitOPs {info['bitops']}; avg bits {info['avg_bits']:.2f}; model bytes {info['model_bytes']:.0f}")
        print(f"  float islands: {info['float_ops'] or 'none'}; shape guards: {info['guards'] or 'none'}")
        print("  files (sha256 verified):")
        for name, digest in info["files"].items():
            print(f"    {name}  {digest[:16]}…")
    else:
        print(f"  {'frozen' if info['frozen'] else 'searching (mixed)'}; factory {info['metadata'].get('factory')}")
        summary = info["metadata"].get("summary")
        if summary:
            print(f"  test acc {summary['mixq_test_acc']:.2f} (FP32 {summary['fp32_test_acc']:.2f}), avg bits "
                  f"{summary['avg_bits']:.2f}, {summary['gbitops_paper']:.3f} GBitOPs (paper)")  # fmt: skip
    bits = info.get("site_bits") or info.get("bits") or {}
    width = max((len(s) for s in bits), default=4)
    print(f"  {'site':<{width}}  bits")
    for site, b in bits.items():
        print(f"  {site:<{width}}  {b}")
