"""llmint8: LLM.int8() vector-wise int8 matmul with 16-bit outlier columns for PyTorch.

Layers, each importing only the ones before it: ``ops`` (the custom operators), ``nn``
(Int8Params, Linear8bitLt, replace_8bit_linear), ``hf`` (Hugging Face integration; import
``llmint8.hf`` explicitly, it needs transformers).
"""
import torch  # noqa: F401  (the extension needs torch's libraries loaded first)

from . import _C  # noqa: F401  (registers the torch.ops.llmint8 operators)
from . import nn, ops
from .nn import Int8Params, Linear8bitLt, model_memory_bytes, replace_8bit_linear
from .ops import (
    dequant_outer,
    int8_linear,
    int8_matmul,
    outlier_split,
    quantize_colwise,
    quantize_rowwise,
)

__all__ = [
    "ops",
    "nn",
    "outlier_split",
    "quantize_rowwise",
    "quantize_colwise",
    "int8_matmul",
    "dequant_outer",
    "int8_linear",
    "Int8Params",
    "Linear8bitLt",
    "replace_8bit_linear",
    "model_memory_bytes",
]
__version__ = "0.1.0"
