"""PNG plots of experiment results, with the paper's published points overlaid where they exist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mixq_compile.plotting import pyplot


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def acc_vs_cost(
    ours: Sequence[tuple[str, float, float, float]],
    paper: Sequence[tuple[str, float, float]],
    path: Path,
    *,
    title: str,
    xlabel: str = "GBitOPs (paper convention)",
    fp32: float | None = None,
) -> None:
    """Accuracy vs cost: ``ours`` = (label, x, acc, acc_std) with error bars, ``paper`` = (label, x, acc)."""
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
    for label, x, acc, std in ours:
        ax.errorbar(x, acc, yerr=std, fmt="o", capsize=3, label=f"ours {label}")
    for label, x, acc in paper:
        ax.scatter(x, acc, marker="^", s=60, facecolors="none", edgecolors="k")
        ax.annotate(f"paper {label}", (x, acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if fp32 is not None:
        ax.axhline(fp32, color="grey", ls="--", lw=1, label="ours FP32")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def lambda_curves(series: Mapping[str, Sequence[tuple[float, float, float, float]]], path: Path, *, title: str) -> None:
    """Accuracy and average bits vs λ: ``series[label]`` = [(λ, acc, acc_std, bits)] (ours and the paper's)."""
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(6, 6), sharex=True)
    for label, points in series.items():
        pts = sorted(points)
        lams = [p[0] for p in pts]
        style = "^--" if label.startswith("paper") else "o-"
        top.errorbar(lams, [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, capsize=2, label=label, ms=4)
        bottom.plot(lams, [p[3] for p in pts], style, label=label, ms=4)
    top.set(ylabel="test accuracy (%)", title=title)
    bottom.set(xlabel="λ", ylabel="average bits")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def scatter_front(
    points: Sequence[tuple[float, float]],
    front: Sequence[tuple[float, float]],
    paper_front: Sequence[tuple[float, float]],
    path: Path,
    *,
    title: str,
    xlabel: str,
) -> None:
    """Every evaluated assignment, our Pareto front and the paper's Pareto front."""
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
    if points:
        ax.scatter(*zip(*points), s=8, alpha=0.4, label="ours: assignments")
    if front:
        ax.plot(*zip(*sorted(front)), "o-", color="C3", label="ours: Pareto front")
    if paper_front:
        ax.plot(*zip(*sorted(paper_front)), "^--", color="k", label="paper: Pareto front")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def latency_vs_bitops(rows: Sequence[Mapping], rho: Mapping[str, float], path: Path, *, title: str) -> None:
    """Median latency vs GBitOPs of each backend's integer artifacts (Spearman ρ in the legend), with each
    backend's FP32 artifact and PyG FP32 eager as horizontal baselines. ``rows`` as in profile_bitops' CSV."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4.8))
    integer = [r for r in rows if r["precision"] == "integer" and r["cached"]]
    for i, backend in enumerate(sorted({r["backend"] for r in integer})):
        pts = [r for r in integer if r["backend"] == backend]
        color = f"C{i}"
        label = f"{backend} integer (Spearman ρ = {rho.get(backend, float('nan')):.2f})"
        ax.scatter([r["gbitops_wa"] for r in pts], [r["median_ms"] for r in pts], color=color, label=label)
        for r in pts:
            ax.annotate(r["config"], (r["gbitops_wa"], r["median_ms"]), fontsize=6, alpha=0.7)
        fp32 = [r for r in rows if r["backend"] == backend and r["precision"] == "fp32"]
        if fp32:
            ax.axhline(fp32[0]["median_ms"], color=color, ls="--", lw=1, label=f"{backend} FP32 artifact")
    for cached, style in ((False, ":"), (True, "-.")):  # the faster of the baseline's timings, as in the ratios
        eager = [r["median_ms"] for r in rows if r["backend"] == "eager" and r["cached"] == cached]
        if eager:
            label = "PyG FP32 eager" + (" (cached=True)" if cached else "")
            ax.axhline(min(eager), color="black", ls=style, lw=1, label=label)
    ax.set(xlabel="GBitOPs (weights × activations convention)", ylabel="median latency (ms)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def speedup_bars(speedups: Mapping[str, Mapping[str, float]], path: Path, *, title: str) -> None:
    """Grouped bars: ``speedups[path][group]`` (e.g. precision path -> data set -> t_fp32 / t)."""
    fig, ax = pyplot().subplots(figsize=(8, 4.2))
    groups = list(dict.fromkeys(g for values in speedups.values() for g in values))
    width = 0.8 / max(len(speedups), 1)
    for i, (label, values) in enumerate(speedups.items()):
        ax.bar([j + i * width for j in range(len(groups))], [values.get(g, 0.0) for g in groups], width, label=label)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, fontsize=8)
    ax.set(ylabel="speed-up over FP32 (t_fp32 / t)", title=title)
    ax.legend(fontsize=7)
    _save(fig, path)


def scale_bars(rows: Sequence[Mapping], path: Path) -> None:
    """Seconds per epoch of each training phase and whole-graph inference vs PyG eager, per (nodes, model), with
    peak RSS on a second panel; the CPU in the title."""
    groups = sorted({(r["nodes"], r["model"]) for r in rows})
    phases = ("fp32", "search", "qat", "inference")
    fig, (time_ax, rss_ax) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / (len(phases) + 1)
    for i, phase in enumerate(phases):
        found = {(r["nodes"], r["model"]): r for r in rows if r["phase"] == phase}
        xs = [g + i * width for g in range(len(groups))]
        time_ax.bar(xs, [found.get(g, {}).get("epoch_s", 0) for g in groups], width, label=phase)
        rss_ax.bar(xs, [found.get(g, {}).get("peak_rss_gib", 0) for g in groups], width, label=phase)
    eager = {(r["nodes"], r["model"]): r for r in rows if r["phase"] == "inference"}
    xs = [g + len(phases) * width for g in range(len(groups))]
    time_ax.bar(xs, [eager.get(g, {}).get("eager_s", 0) for g in groups], width, label="PyG FP32 eager (inference)")
    rss_ax.bar(xs, [eager.get(g, {}).get("eager_peak_rss_gib", 0) for g in groups], width, label="PyG FP32 eager")
    labels = [f"{n:,} nodes\n{m}" for n, m in groups]
    for ax, ylabel in ((time_ax, "s per epoch (inference: s per pass)"), (rss_ax, "peak RSS (GiB)")):
        ax.set_xticks([g + 0.4 for g in range(len(groups))], labels, fontsize=8)
        ax.set(ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
    time_ax.set_yscale("log")
    time_ax.legend(fontsize=7)
    cpu = next((r.get("cpu") for r in rows if r.get("cpu")), "CPU not recorded")
    fig.suptitle(f"scale benchmark on {cpu}", fontsize=8)
    _save(fig, path)


def acc_vs_latency(rows: Sequence[Mapping], fp32: Mapping[str, float], path: Path, *, title: str) -> None:
    """Test accuracy vs measured latency of each exported artifact, one panel per data set, the search penalty as
    marker (λ beside each point; the error bar is the spread of that artifact's timings over rounds), FP32
    accuracy as a dashed line. ``rows`` as in latency_search's CSV."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = pyplot().subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.4), squeeze=False)
    styles = {"none": ("*", "k", "all 8 bits"), "bitops": ("o", "C0", "BitOPs penalty"),
              "latency": ("^", "C3", "latency penalty")}  # fmt: skip
    for ax, dataset in zip(axes[0], datasets):
        for penalty, (marker, color, label) in styles.items():
            pts = [r for r in rows if r["dataset"] == dataset and r["penalty"] == penalty]
            if not pts:
                continue
            ax.errorbar([r["latency_ms"] for r in pts], [r["acc"] for r in pts],
                        xerr=[r["latency_spread_ms"] for r in pts], fmt=marker, color=color, ms=8, capsize=3,
                        label=label)  # fmt: skip
            for r in pts:
                if penalty != "none":
                    note = f"λ={r['lam']:g}, {r['avg_bits']:.1f} b"
                    ax.annotate(
                        note, (r["latency_ms"], r["acc"]), textcoords="offset points", xytext=(5, 3), fontsize=7
                    )
        if dataset in fp32:
            ax.axhline(fp32[dataset], color="grey", ls="--", lw=1, label="FP32 (PyG)")
        ax.set(xlabel="measured latency of the exported artifact (ms)", ylabel="test accuracy (%)", title=dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    _save(fig, path)
