"""The ``bitblas`` backend: quantized linears as bitBLAS GPU matmuls (CUDA only)."""
