"""One interface for every deployment backend.

A backend turns an :class:`~mixq_compile.ir.program.IntegerProgram` into files in a directory and turns those
files back into a callable. Everything else an artifact needs (manifest, checksums, atomic writes, input checks)
is shared and lives in :mod:`mixq_compile.artifact`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from ..errors import MixQError
from ..ir.program import IntegerProgram

#: a loaded program part: takes torch tensors, returns a tuple of torch tensors.
Runner = Callable[..., tuple[Tensor, ...]]


class BackendUnavailableError(MixQError, RuntimeError):
    """A backend's runtime or hardware is missing here; the message says what is missing and how to get it."""


class Backend(ABC):
    """A deployment target.

    ``export`` writes the backend's files into ``directory`` and returns backend-specific manifest entries (JSON
    data, e.g. file names, opset or target). ``load`` reads them back into two runners, mirroring
    :class:`IntegerProgram`: ``structure(*inputs) -> frontier`` and ``features(*inputs, *frontier) -> outputs``
    (flat tuples of torch tensors). A backend may run the structure part with another runtime (preprocessing).
    """

    name: ClassVar[str]

    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can run here, else why not (missing package, no GPU...)."""
        return None

    def versions(self) -> dict[str, str]:
        """Versions of the libraries this backend uses (recorded in the manifest)."""
        return {}

    @abstractmethod
    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict: ...

    @abstractmethod
    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]: ...

    def kernel_paths(self, entries: dict) -> dict[str, str]:
        """Which kernels an artifact with these manifest entries runs on *this* CPU (shown by ``profile``, the
        demo and ``Artifact.kernel_paths``)."""
        return {}

    def finite_checked_inputs(self, entries: dict) -> tuple[int, ...]:
        """Positions of inputs whose NaN/Inf test the artifact's own kernels make (raising the signature's error),
        so :class:`~mixq_compile.artifact.Artifact` skips its separate pass over them. Backends that have such
        kernels list them under this key of their manifest entries at export."""
        return tuple(entries.get("finite_checked_inputs", ()))

    def require(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend {self.name!r} is unavailable: {reason}")
