"""Atomic writes of directories and files: a half-written save, export or cache never replaces a good one."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def check_replaceable(target: Path, marker: str, what: str, overwrite: bool, error: type[Exception]) -> None:
    """Refuse to write ``what`` over anything but an empty directory or an earlier ``what`` (a directory holding
    ``marker``), and over an earlier one unless ``overwrite``: a write never deletes files it did not make."""
    if not target.exists() and not target.is_symlink():
        return
    earlier = (target / marker).is_file()
    if not target.is_dir() or (not earlier and any(target.iterdir())):
        raise error(
            f"{target} exists and is not a {what}; nothing there was touched (a {what} never replaces other "
            f"files): choose a new path or remove it first"
        )
    if earlier and not overwrite:
        raise error(f"{target} already holds a {what}; pass overwrite=True (CLI: --overwrite) or choose a new path")


def write_directory(target: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create ``target`` by letting ``fill`` write into a staging directory next to it, then renaming it in place.

    If ``fill`` raises, the staging directory is removed and an existing ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
        os.replace(staging, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def write_file(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` through a uniquely named temporary file beside it and a rename, so a reader (or a
    crash mid-write) sees the old file or the new one, never half of one. The file gets the usual permissions (the
    umask's), not the owner-only ones of ``tempfile.mkstemp``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(staging, "x") as f:
            f.write(text)
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return target
