"""PNG plots of experiment results, with the paper's published points overlaid where they exist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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
    fig, ax = plt.subplots(figsize=(6, 4.2))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lambda_curves(series: Mapping[str, Sequence[tuple[float, float, float, float]]], path: Path, *, title: str) -> None:
    """Accuracy and average bits vs λ: ``series[label]`` = [(λ, acc, acc_std, bits)] (ours and the paper's)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    fig, ax = plt.subplots(figsize=(6, 4.2))
    if points:
        ax.scatter(*zip(*points), s=8, alpha=0.4, label="ours: assignments")
    if front:
        ax.plot(*zip(*sorted(front)), "o-", color="C3", label="ours: Pareto front")
    if paper_front:
        ax.plot(*zip(*sorted(paper_front)), "^--", color="k", label="paper: Pareto front")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
