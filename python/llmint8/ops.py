"""Typed wrappers and fake (meta) kernels for the torch.ops.llmint8 operators.

The schemas live in csrc/ops.cpp; the kernels in csrc/cpu and csrc/cuda. Nothing here imports the
nn or hf layers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

_ops = torch.ops.llmint8

# Where llm_int8_linear takes int8_weight_linear (csrc/forward_rule.h holds the rule; these mirror
# it): up to SMALL_BATCH_ROWS rows on every device, where a layer is bound by reading its weight;
# on Hopper GPUs, where a tensor-core kernel for it runs (16-bit x, K a multiple of 16, N of 8), up
# to TENSOR_CORE_WEIGHT_ONLY_ROWS, and up to SMALL_PRODUCT_ROWS where rows * N * K is at most
# SMALL_PRODUCT_MACS. It is faster there than the decomposition, and more accurate.
SMALL_BATCH_ROWS = 16
TENSOR_CORE_WEIGHT_ONLY_ROWS = 128
SMALL_PRODUCT_ROWS = 2048
SMALL_PRODUCT_MACS = 2**33

# Default number of outlier columns split out per call. LLM.int8 models show a handful (the
# paper: at most ~7 systematic dimensions at 6.7B); columns beyond capacity stay in the int8 part.
DEFAULT_OUTLIER_CAPACITY = 64


def outlier_split(
    x: torch.Tensor, threshold: float, capacity: int = DEFAULT_OUTLIER_CAPACITY
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns of ``x [*, K]`` with any ``|value| >= threshold`` (``threshold == 0``: none).

    Returns ``(outlier_cols, count, x_outliers)``: int32 ``[capacity]`` ascending column indices
    padded with -1, the int32 scalar count of all such columns (it may exceed ``capacity``; the
    columns past capacity are not split out), and ``x[..., outlier_cols]`` ``[*, capacity]`` with
    zeros in padded slots. Every shape is fixed by the inputs' shapes, so no host sync happens.
    """
    return _ops.outlier_split(x, float(threshold), int(capacity))


def quantize_rowwise(
    x: torch.Tensor, outlier_cols: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 quantization of each row of ``x [*, K]``, skipping ``outlier_cols``.

    Returns int8 ``[*, K]`` (outlier columns written as 0) and fp32 row absmax ``[*]``:
    ``q = round_half_even(x * (127 / absmax))`` in fp32, all-zero rows give absmax 0 and q 0.
    """
    return _ops.quantize_rowwise(x, outlier_cols)


def quantize_colwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 quantization of a weight ``[N, K]`` per output channel: int8 ``[N, K]``, fp32 ``[N]``."""
    return _ops.quantize_colwise(weight)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b.T`` for int8 ``a [*, K]`` and ``b [N, K]``."""
    return _ops.int8_matmul(a, b)


def dequant_outer(
    acc: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """``acc * (row_absmax ⊗ col_absmax) / 127² + bias`` computed in fp32, returned in ``out_dtype``."""
    return _ops.dequant_outer(acc, row_absmax, col_absmax, bias, out_dtype)


def int8_weight_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x @ (weight_int8 * weight_absmax / 127).T + bias`` in fp32, returned in ``x``'s dtype.

    The small-batch fast path: activations stay 16-bit (no rounding, no outlier split), the int8
    weight is read once and widened on tensor cores. Its error against float64 is the weight's
    quantization error alone, so at most that of the LLM.int8 decomposition.
    """
    return _ops.int8_weight_linear(x, weight_int8, weight_absmax, bias)


def dequantize_int8_weight(
    weight_int8: torch.Tensor, weight_absmax: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``weight_int8 * absmax / 127`` per output channel, computed in fp32 and returned in ``dtype``."""
    return (weight_int8.float() * (weight_absmax / 127.0)[:, None]).to(dtype)


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 6.0,
    capacity: int = DEFAULT_OUTLIER_CAPACITY,
) -> torch.Tensor:
    """The LLM.int8 layer ``x @ W.T + bias`` in ``x``'s dtype, as one fused op.

    Computes what ``int8_linear_composed`` computes from the five ops, with one launch sequence
    from C++ and the dequantization, bias and 16-bit outlier product fused into one pass; the
    outlier product is added in fp32 before the single rounding to ``x``'s dtype.
    """
    return _ops.int8_linear(x, weight_int8, weight_absmax, bias, float(threshold), int(capacity))


def int8_linear_composed(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 6.0,
    capacity: int = DEFAULT_OUTLIER_CAPACITY,
) -> torch.Tensor:
    """The LLM.int8 layer composed from the five ops: ``x @ W.T + bias`` in ``x``'s dtype (reference).

    Outlier columns of ``x`` (a fixed ``capacity`` of them, padded, so shapes never depend on data
    and no host sync happens) multiply the matching weight columns dequantized in fp32 and cast to
    ``x``'s dtype; the rest goes through int8 x int8 -> int32 and ``dequant_outer``.
    """
    outlier_cols, _, x_outliers = outlier_split(x, threshold, capacity)
    x_int8, x_absmax = quantize_rowwise(x, outlier_cols)
    acc = int8_matmul(x_int8, weight_int8)
    out = dequant_outer(acc, x_absmax, weight_absmax, bias, x.dtype)
    if threshold == 0 or capacity == 0:
        return out
    # Padded slots select column 0, but their x_outliers entries are zero, so they add nothing.
    weight_cols = weight_int8.index_select(1, outlier_cols.clamp(min=0))
    return out + x_outliers @ dequantize_int8_weight(weight_cols, weight_absmax, x.dtype).T


def llm_int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 6.0,
    capacity: int = DEFAULT_OUTLIER_CAPACITY,
    exact_decomposition: bool = False,
) -> torch.Tensor:
    """The forward of an int8 linear layer: the fastest path with LLM.int8 accuracy or better.

    ``int8_weight_linear`` (16-bit activations, no rounding) up to ``SMALL_BATCH_ROWS`` rows, and on
    Hopper GPUs up to ``TENSOR_CORE_WEIGHT_ONLY_ROWS`` (``SMALL_PRODUCT_ROWS`` where rows * N * K is
    at most ``SMALL_PRODUCT_MACS``); otherwise, or with ``exact_decomposition``,
    the LLM.int8 decomposition (``int8_linear``). One op that picks in C++: the choice depends on
    shapes and the device, never on values, so it holds under torch.compile and CUDA graphs.
    """
    return _ops.llm_int8_linear(x, weight_int8, weight_absmax, bias, float(threshold), int(capacity),
                                bool(exact_decomposition))


def _check_outlier_arguments_fake(threshold, capacity):
    """csrc/checks.cpp's check_outlier_arguments, for the fake kernels."""
    torch._check(math.isfinite(threshold) and threshold >= 0,
                 lambda: f"threshold must be a finite number >= 0 (0 disables outliers), got {threshold}")
    torch._check(capacity >= 0, lambda: f"capacity must be >= 0, got {capacity}")


@torch.library.register_fake("llmint8::outlier_split")
def _outlier_split_fake(x, threshold, capacity):
    _check_outlier_arguments_fake(threshold, capacity)
    cols = x.new_empty((capacity,), dtype=torch.int32)
    count = x.new_empty((), dtype=torch.int32)
    return cols, count, x.new_empty((*x.shape[:-1], capacity))


@torch.library.register_fake("llmint8::quantize_rowwise")
def _quantize_rowwise_fake(x, outlier_cols=None):
    return torch.empty_like(x, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("llmint8::quantize_colwise")
def _quantize_colwise_fake(weight):
    torch._check(weight.dim() == 2, lambda: f"weight must be 2D [N, K], got {weight.dim()}D")
    return (
        torch.empty_like(weight, dtype=torch.int8),
        weight.new_empty(weight.shape[:1], dtype=torch.float32),
    )


@torch.library.register_fake("llmint8::int8_matmul")
def _int8_matmul_fake(a, b):
    torch._check(b.dim() == 2, lambda: f"b must be 2D [N, K], got {b.dim()}D")
    torch._check(
        a.shape[-1] == b.shape[1],
        lambda: f"a's last dimension (K = {a.shape[-1]}) must equal b's second dimension ({b.shape[1]})",
    )
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=torch.int32)


@torch.library.register_fake("llmint8::int8_weight_linear")
def _int8_weight_linear_fake(x, weight_int8, weight_absmax, bias=None):
    torch._check(
        x.shape[-1] == weight_int8.shape[1],
        lambda: f"x's last dimension (K = {x.shape[-1]}) must equal weight_int8's second dimension",
    )
    return x.new_empty((*x.shape[:-1], weight_int8.shape[0]))


@torch.library.register_fake("llmint8::llm_int8_linear")
def _llm_int8_linear_fake(x, weight_int8, weight_absmax, bias, threshold, capacity, exact_decomposition):
    return _int8_linear_fake(x, weight_int8, weight_absmax, bias, threshold, capacity)


@torch.library.register_fake("llmint8::int8_linear")
def _int8_linear_fake(x, weight_int8, weight_absmax, bias, threshold, capacity):
    _check_outlier_arguments_fake(threshold, capacity)
    torch._check(
        x.shape[-1] == weight_int8.shape[1],
        lambda: f"x's last dimension (K = {x.shape[-1]}) must equal weight_int8's second dimension",
    )
    return x.new_empty((*x.shape[:-1], weight_int8.shape[0]))


@torch.library.register_fake("llmint8::dequant_outer")
def _dequant_outer_fake(acc, row_absmax, col_absmax, bias, out_dtype):
    return torch.empty_like(acc, dtype=out_dtype)
