"""The paper's models as plain FP32 PyTorch Geometric modules: inputs to ``mixq_compile.quantize``."""

from .csl import CSLGCN
from .gcn import ArxivGCN, PlanetoidGCN
from .gin import TUGIN
from .sage_tag import SAGE, TAG

__all__ = ["CSLGCN", "SAGE", "TAG", "TUGIN", "ArxivGCN", "PlanetoidGCN"]
