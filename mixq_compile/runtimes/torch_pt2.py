"""The ``torch`` backend: the integer program as ``torch.export`` programs (``.pt2``), loadable with plain torch.

The integer kernels are ordinary ATen ops (``torch._int_mm``, integer scatter-add, round/clamp), so the exported
files do not need mixq_compile to run: ``torch.export.load(path).module()`` is enough.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.export import Dim

from ..integer.program import IntegerProgram
from .base import Backend, Runner

STRUCTURE_FILE = "structure.pt2"
FEATURES_FILE = "features.pt2"
AOTI_FILE = "features_aoti.pt2"


def _dynamic(inputs: tuple[Tensor, ...]) -> tuple[dict[int, object], ...]:
    """Every dim may vary, except size-1 dims (broadcast columns such as ``[E, 1]`` edge weights)."""
    return tuple({d: Dim.AUTO for d in range(t.dim()) if t.shape[d] != 1} for t in inputs)


def export_program(module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` with every dim dynamic (sizes of nodes, edges and graphs vary between calls)."""
    return torch.export.export(module, inputs, dynamic_shapes=_dynamic(inputs), strict=False)


class TorchBackend(Backend):
    """Options: ``aot_inductor=True`` compiles the feature program ahead of time with AOTInductor (fused C++
    kernels for the element-wise quantize/requantize chains; needs a C++ compiler at export, ~30 s per model)."""

    name = "torch"

    def __init__(self, aot_inductor: bool = False) -> None:
        self.aot_inductor = aot_inductor

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict:
        frontier = tuple(program.structure(*example_inputs))
        torch.export.save(export_program(program.structure, example_inputs), directory / STRUCTURE_FILE)
        features = export_program(program.features, example_inputs + frontier)
        if self.aot_inductor:
            torch._inductor.aoti_compile_and_package(features, package_path=str(directory / AOTI_FILE))
            return {"structure": STRUCTURE_FILE, "features": AOTI_FILE, "aot_inductor": True}
        torch.export.save(features, directory / FEATURES_FILE)
        return {"structure": STRUCTURE_FILE, "features": FEATURES_FILE, "aot_inductor": False}

    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]:
        structure = load_pt2(directory / entries["structure"])
        if entries.get("aot_inductor"):
            return structure, _no_grad_tuple(torch._inductor.aoti_load_package(str(directory / entries["features"])))
        return structure, load_pt2(directory / entries["features"])


def load_pt2(path: Path) -> Runner:
    """A ``.pt2`` program as a no-grad callable returning a tuple."""
    return _no_grad_tuple(torch.export.load(path).module())


def _no_grad_tuple(module) -> Runner:
    @torch.no_grad()
    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(module(*inputs))

    return run
