"""Resumable sweeps: every finished run is appended to a JSONL file keyed by its exact config.

Why: experiments take hours on a shared 2-core machine and get interrupted. A restarted sweep reads the file, skips
every config that already finished, and re-runs only the missing or failed ones. A run that raises is recorded with
its error and traceback, and the sweep goes on with the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

Config = dict[str, Any]
Record = dict[str, Any]
EXECUTORS = ("local", "ray")


def config_key(config: Config) -> str:
    """A stable key of a config: the SHA-1 of its canonical JSON (sorted keys)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_records(path: Path) -> list[Record]:
    """All records of a JSONL file (a torn last line from a killed writer is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def finished(records: Iterable[Record]) -> dict[str, Record]:
    """Key -> the latest successful record."""
    return {r["key"]: r for r in records if r.get("status") == "ok"}


def append_record(path: Path, record: Record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def execute(run: Callable[[Config], dict], config: Config, threads: int = 1) -> Record:
    """Run one config, never raising: the record holds the result or the error. Seeds are the run's business."""
    import torch

    torch.set_num_threads(threads)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        result, error = run(config), None
    except Exception as exc:
        result, error = None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return _record(config, result, error, time.perf_counter() - start, time.process_time() - cpu)


def _record(config: Config, result: dict | None, error: str | None, wall_s: float, cpu_s: float | None) -> Record:
    return {
        "key": config_key(config),
        "config": config,
        "status": "ok" if error is None else "error",
        "result": result,
        "error": error,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _local(run, configs: list[Config], workers: int, threads: int, path: Path) -> Iterator[Record]:
    if workers <= 1:
        for config in configs:
            if config_key(config) in finished(read_records(path)):
                continue  # finished meanwhile by a concurrent sweep on the same file
            yield execute(run, config, threads)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(execute, run, config, threads) for config in configs]
        for future in as_completed(futures):
            yield future.result()


def _ray(run, configs: list[Config], workers: int, threads: int, path: Path) -> Iterator[Record]:
    try:
        import ray
    except ImportError as error:
        raise RuntimeError(
            "--executor ray needs Ray: pip install 'mixq-compile[ray]' (or use the default --executor local)"
        ) from error
    if not ray.is_initialized():
        ray.init(num_cpus=max(workers, 1), include_dashboard=False)
    remote = ray.remote(num_cpus=1)(execute)
    config_of = {remote.remote(run, config, threads): config for config in configs}
    pending = list(config_of)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            record = ray.get(done[0])
        except ray.exceptions.RayError as error:  # the worker died or could not load the run: record, go on
            record = _record(config_of[done[0]], None, f"{type(error).__name__}: {error}", 0.0, None)
        yield record


def run_sweep(
    run: Callable[[Config], dict],
    configs: list[Config],
    path: Path,
    *,
    executor: str = "local",
    workers: int = 1,
    threads: int = 1,
    desc: str = "sweep",
) -> list[Record]:
    """Run every config not yet finished in ``path``; append each record as it lands; return all ok records
    of ``configs`` (old and new) in config order. ``run`` must be a module-level function (it is pickled)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {EXECUTORS}")
    done = finished(read_records(path))
    todo = [c for c in configs if config_key(c) not in done]
    if len(todo) < len(configs):
        print(f"{desc}: {len(configs) - len(todo)} of {len(configs)} runs already finished in {path}, skipping them")
    backend = _local if executor == "local" else _ray
    failures = 0
    with tqdm(total=len(todo), desc=desc) as bar:
        for record in backend(run, todo, workers, threads, path):
            append_record(path, record)
            if record["status"] == "ok":
                done[record["key"]] = record
            else:
                failures += 1
                tqdm.write(f"{desc}: run failed ({record['config']}): {record['error'].splitlines()[0]}")
            bar.update()
    if failures:
        print(f"{desc}: {failures} run(s) failed; their errors are in {path}; a rerun retries them")
    return [done[config_key(c)] for c in configs if config_key(c) in done]
