"""llmint8: LLM.int8() vector-wise int8 matmul with 16-bit outlier columns for PyTorch."""
import torch  # noqa: F401  (the extension needs torch's libraries loaded first)

from . import _C  # noqa: F401  (registers the torch.ops.llmint8 operators)
from . import ops
from .ops import (
    dequant_outer,
    int8_linear_reference,
    int8_matmul,
    outlier_split,
    quantize_colwise,
    quantize_rowwise,
)

__all__ = [
    "ops",
    "outlier_split",
    "quantize_rowwise",
    "quantize_colwise",
    "int8_matmul",
    "dequant_outer",
    "int8_linear_reference",
]
__version__ = "0.1.0"
