"""Measure an artifact (or any callable model): latency percentiles, throughput, peak memory, BitOPs, model bytes."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import cpu
from .artifact import Artifact, load_artifact

_PAGE = 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRss:
    """The process's peak resident set while active (Linux ``/proc``).

    Where the kernel allows it, the high-water mark is reset on entry (``/proc/self/clear_refs``) and read on exit
    (``VmHWM``): exact, and nothing runs meanwhile. Otherwise a thread samples the resident set every millisecond,
    which takes the GIL and a core from the code it measures, so :func:`profile` never times under it. A PeakRss
    opened inside another samples too, as resetting the mark would lose the outer one's peak.
    """

    _open = 0  # how many are active (the high-water mark is one per process)

    def __init__(self) -> None:
        self.baseline = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakRss:
        if PeakRss._open > 0 or not _reset_high_water_mark():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        PeakRss._open += 1
        return self

    def __exit__(self, *exc) -> None:
        PeakRss._open -= 1
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = max(self.peak, _high_water_mark())
        self.peak = max(self.peak, _rss_bytes())


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        return False
    return _high_water_mark() > 0


def _high_water_mark() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class ProfileReport:
    """One measured configuration. Latencies in milliseconds; memory in MiB; BitOPs from the artifact manifest."""

    name: str
    backend: str
    precision: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    throughput_per_s: float
    nodes_per_s: float
    peak_rss_mib: float
    peak_rss_delta_mib: float
    bitops_wa: float | None
    bitops_paper: float | None
    avg_bits: float | None
    model_bytes: float | None
    warmup: int
    repeats: int
    #: the CPU it ran on (:func:`mixq_compile.cpu.summary`) and the kernels the artifact took there.
    cpu: str = ""
    kernel_paths: dict | None = None
    #: every timed call, ascending (to merge measurements taken in turns, e.g. round-robin over artifacts)
    times_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        bitops = f"{self.bitops_wa / 1e9:.3f} GBitOPs(wa)" if self.bitops_wa is not None else "BitOPs n/a"
        return (
            f"{self.name} [{self.backend}/{self.precision}]: median {self.median_ms:.3f} ms "
            f"(p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}), {self.throughput_per_s:.1f}/s, "
            f"peak RSS {self.peak_rss_mib:.0f} MiB (+{self.peak_rss_delta_mib:.1f}), {bitops}; on {self.cpu}"
            + (f"; kernels: {self.kernel_paths}" if self.kernel_paths else "")
        )


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def profile(
    artifact: Artifact | str | Path | Callable[..., object],
    example_inputs: Sequence[Tensor],
    *,
    warmup: int = 10,
    repeats: int = 50,
    name: str | None = None,
) -> ProfileReport:
    """Time ``artifact(*example_inputs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    ``artifact`` is a loaded :class:`Artifact`, an artifact directory (loaded here with the structure part cached,
    the transductive setting) or any callable (e.g. the PyG FP32 model, for baselines; its BitOPs are ``None``).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if isinstance(artifact, str | Path):
        artifact = load_artifact(artifact, cache_structure=True)
    args = tuple(example_inputs)
    with torch.no_grad():
        for _ in range(warmup):
            artifact(*args)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            artifact(*args)
            times.append((time.perf_counter() - start) * 1e3)
        with PeakRss() as memory:  # after the timings: a sampling thread would slow the calls it watches
            for _ in range(min(repeats, 3)):
                artifact(*args)
    times.sort()
    median = statistics.median(times)
    manifest = artifact.manifest if isinstance(artifact, Artifact) else {}
    bitops = manifest.get("bitops", {})
    nodes = args[0].shape[0] if args and args[0].dim() > 0 else 0
    return ProfileReport(
        name=name or (str(artifact.path.name) if isinstance(artifact, Artifact) else type(artifact).__name__),
        backend=manifest.get("backend", "eager"),
        precision=manifest.get("precision", "fp32"),
        median_ms=median,
        p10_ms=_percentile(times, 0.1),
        p90_ms=_percentile(times, 0.9),
        throughput_per_s=1e3 / median,
        nodes_per_s=nodes * 1e3 / median,
        peak_rss_mib=memory.peak / 2**20,
        peak_rss_delta_mib=(memory.peak - memory.baseline) / 2**20,
        bitops_wa=bitops.get("wa"),
        bitops_paper=bitops.get("paper"),
        avg_bits=manifest.get("avg_bits"),
        model_bytes=manifest.get("model_bytes"),
        warmup=warmup,
        repeats=repeats,
        cpu=cpu.summary(),
        kernel_paths=dict(artifact.kernel_paths) if isinstance(artifact, Artifact) else None,
        times_ms=tuple(times),
    )
