"""The ``tvm`` backend: the feature program as a compiled Apache TVM Relax module (CPU, llvm)."""
