// Hopper int8 x int8 GEMM (CUTLASS, sm90a) whose epilogue dequantizes straight to fp16/bf16.
#pragma once

#include <ATen/core/Tensor.h>

namespace llmint8 {

// True when the fused sm90 GEMM can run these operands: built with CUTLASS sm90 support, the
// tensors' device has compute capability 9.0, a [M, K] and b [N, K] are contiguous int8 on it,
// M > 0, K > 0, K % 16 == 0, N % 8 == 0, a and b 16-byte aligned, out dtype fp16 or bf16.
bool int8_scaled_gemm_sm90_applies(const at::Tensor& a_int8, const at::Tensor& b_int8,
                                   at::ScalarType out_dtype);

// The most outlier slots (capacity) the epilogue multiplies: it holds them all in shared memory.
constexpr int64_t kSm90MaxOutlierSlots = 64;

// The outlier columns' 16-bit part of an LLM.int8 product: x_outliers [M, capacity] times
// w_cols_t [capacity, N] (the weight's outlier columns, dequantized), both in out's dtype, over
// the first min(count, capacity) slots; count is an int32 on the device; 1 <= capacity <=
// kSm90MaxOutlierSlots. Undefined: no outliers.
struct OutlierProductOperands {
  at::Tensor x_outliers, w_cols_t, count;
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
