"""The ``mixq::`` operators: integer instructions fused for speed (CSR aggregation, quantize + input linear,
one-pass quantize / requantize, the integer GEMM), each with exact ATen semantics and native CPU kernels chosen at
run time (:mod:`.native`, ``native_kernels.c``).

Lowering's backend rewrites (:mod:`mixq_compile.lowering`) emit them, the torch backend runs them and the TVM
backend translates them. They are registered on import, so ``import mixq_compile`` is all a process needs before it
loads a ``.pt2`` program that calls them."""

from . import csr, elementwise, input_linear, linear, packed  # noqa: F401  (register torch.ops.mixq.*)
