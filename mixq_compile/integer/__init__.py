"""Integer programs: the instruction set (:mod:`.kernels`), the lowering entry point (:mod:`.program`), and the torch
backend's custom ops (:mod:`.csr`, :mod:`.elementwise`, :mod:`.input_linear`, :mod:`.linear`; native code in
:mod:`.native`),
registered here so that ``import mixq_compile`` is all a process needs before it loads a ``.pt2`` program that
calls them."""

from . import csr, elementwise, input_linear, linear  # noqa: F401  (register torch.ops.mixq.*)
