"""Build an exported bitblas artifact's kernels on a machine WITHOUT a GPU (codegen + nvcc only, nothing runs).

Not part of CI: it needs the hacks of TOOLCHAIN_NOTES.md §Q5. With ``BITBLAS_VENV`` a separate venv (default
``.venv-bitblas``) and ``STUB`` a scratch folder for the libcuda stub, run it with that venv's python::

    python3 -m venv $BITBLAS_VENV
    $BITBLAS_VENV/bin/pip install torch==2.13.0 bitblas==0.1.0.post1 safetensors \\
        nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12
    # libcuda.so.1 stub: every cu* symbol the bundled libraries import, each returning an error code
    for f in $(find $BITBLAS_VENV -path '*bitblas*' -name '*.so*'); do nm -D --undefined-only $f; done \\
        | grep -oE '\\bcu[A-Z][A-Za-z0-9_]*' | sort -u | awk '{print "int "$1"(void){return 100;}"}' > stub.c
    mkdir -p $STUB && gcc -shared -fPIC -o $STUB/libcuda.so.1 stub.c
    ln -sf libcuda.so.1 $STUB/libcuda.so
    NV=$(ls -d $BITBLAS_VENV/lib/python3.11/site-packages/nvidia/*/lib | tr '\\n' ':')
    LD_LIBRARY_PATH=$STUB:$NV LIBRARY_PATH=$STUB PATH=/usr/local/cuda/bin:$PATH \\
        $BITBLAS_VENV/bin/python -m experiments.bitblas_codegen_cpu ARTIFACT [tl|tir]

It fakes an A100 for bitBLAS' device queries, builds each planned ``bitblas.Matmul`` (untuned), checks that
bitBLAS' ``transform_weight`` reproduces the exported packed weights, and prints one JSON line per kernel.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

SITE = glob.glob(os.path.join(os.environ.get("BITBLAS_VENV", ".venv-bitblas"), "lib/python3*/site-packages"))[0]
LAYOUT = Path(__file__).resolve().parents[1] / "mixq_compile" / "runtimes" / "bitblas" / "layout.py"
#: TVM device attribute id -> A100 value (kExist, kMaxThreadsPerBlock, kWarpSize, ..., kTotalGlobalMemory).
A100 = {
    0: 1, 1: 1024, 2: 32, 3: 49152, 4: "8.0", 5: "NVIDIA A100-SXM4-40GB", 6: 1410000, 7: 108,
    8: "[1024, 1024, 64]", 9: 65536, 11: 12000, 12: "12.0", 13: 41943040, 14: 42949672960, 15: 42949672960,
}  # fmt: skip


def _import_bitblas():
    """Import bitBLAS with its bundled TVM answering device queries as an A100 (its import queries GPU 0)."""
    sys.path.insert(0, f"{SITE}/bitblas/3rdparty/tvm/python")
    from tvm._ffi import runtime_ctypes

    runtime_ctypes.Device._GetDeviceAttr = lambda self, kind, index, attr: A100.get(attr, 0)
    import bitblas

    return bitblas


def _load_layout():
    """The layout module by path: this venv has no torch_geometric, so the mixq_compile package cannot import."""
    spec = importlib.util.spec_from_file_location("bitblas_layout", LAYOUT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bitblas_layout"] = module
    spec.loader.exec_module(module)
    return module


def main(artifact: Path, backend: str) -> None:
    bitblas = _import_bitblas()
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    layout = _load_layout()
    plan = json.loads((artifact / "bitblas_plan.json").read_text())
    weights = load_file(str(artifact / plan["weights"]))
    target = "cuda -arch=sm_80" if backend == "tir" else "nvidia/nvidia-a100"
    for entry in plan["matmuls"]:
        if "unmapped" in entry:
            continue
        matmul = layout.MatmulPlan.from_dict(entry)
        started = time.perf_counter()
        config = bitblas.MatmulConfig(**matmul.matmul_config())
        kernel = bitblas.Matmul(config, target=target, enable_tuning=False, backend=backend)
        packed = weights[matmul.packed]
        codes = layout.unpack_weight(packed, matmul.width, matmul.in_features).t()
        codes = F.pad(codes, (0, matmul.K - matmul.in_features)).contiguous()
        report = {
            "layer": matmul.layer,
            "W_dtype": matmul.W_dtype,
            "N": matmul.N,
            "K": matmul.K,
            "seconds": round(time.perf_counter() - started, 1),
            "cuda_source_bytes": len(kernel.get_source()),
            "packing_matches_bitblas": torch.equal(kernel.transform_weight(codes).view(torch.int8), packed),
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "tl")
