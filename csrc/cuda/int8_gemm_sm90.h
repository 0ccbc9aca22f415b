// Hopper int8 x int8 GEMM (CUTLASS, sm90a) whose epilogue dequantizes straight to fp16/bf16.
#pragma once

#include <ATen/core/Tensor.h>

#include "../core/outlier_layout.h"

namespace llmint8 {

// True when the fused sm90 GEMM can run these operands: built with CUTLASS sm90 support, the
// tensors' device has compute capability 9.0, a [M, K] and b [N, K] are contiguous int8 on it,
// M > 0, K > 0, K % 16 == 0, N % 8 == 0, a and b 16-byte aligned, out dtype fp16 or bf16.
bool int8_scaled_gemm_sm90_applies(const at::Tensor& a_int8, const at::Tensor& b_int8,
                                   at::ScalarType out_dtype);

// The most outlier slots (capacity) the epilogue multiplies: it holds them all in shared memory.
constexpr int64_t kSm90MaxOutlierSlots = 64;
// Every tile shape of the GEMM divides these, so that buffers padded to them hold whole tiles.
constexpr int64_t kSm90TileRows = 128;
constexpr int64_t kSm90MaxTileCols = 256;

// The outlier operands' layout the epilogue reads: fragment order, rows and columns padded to
// whole tiles (every tile's copies stay inside the buffers).
inline OutlierLayout sm90_outlier_layout(int64_t rows, int64_t n_dim, int64_t capacity) {
  const int64_t padded_rows = blocks_for(rows, kSm90TileRows) * kSm90TileRows;
  const int64_t padded_cols = blocks_for(n_dim, kSm90MaxTileCols) * kSm90MaxTileCols;
  return {capacity, n_dim, padded_rows / kFragmentRows, padded_cols / kFragmentCols};
}

// The outlier columns' 16-bit part of an LLM.int8 product: x_outliers [M, capacity] times w_cols
// [capacity, N] (the weight's outlier columns, dequantized), both in out's dtype and laid out by
// sm90_outlier_layout, over the first min(count, capacity) slots; count is an int32 on the
// device; 1 <= capacity <= kSm90MaxOutlierSlots. Undefined: no outliers.
struct OutlierProductOperands {
  at::Tensor x_outliers, w_cols, count;
  OutlierLayout layout;
  bool defined() const { return x_outliers.defined(); }
};

// out [M, N] = a [M, K] . b [N, K]^T * row_absmax [M] (x) col_absmax [N] / 127^2 + bias [N]
// + the outlier product, in fp32 with one rounding to out's dtype. bias (out's dtype, 16-byte
// aligned) may be undefined; out is preallocated, contiguous and 16-byte aligned.
// Runs on the current CUDA stream; requires int8_scaled_gemm_sm90_applies.
void int8_scaled_gemm_sm90(const at::Tensor& a_int8, const at::Tensor& b_int8,
                           const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                           const at::Tensor& bias, const OutlierProductOperands& outliers,
                           at::Tensor& out);

}  // namespace llmint8
