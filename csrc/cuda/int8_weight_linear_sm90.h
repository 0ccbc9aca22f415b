// Hopper 16-bit activations x int8 weight GEMM (CUTLASS mixed-input wgmma), scaled per channel.
#pragma once

#include <ATen/core/Tensor.h>

namespace llmint8 {

// True when int8_weight_linear_sm90 can run these operands: built with CUTLASS sm90 support, the
// device has compute capability 9.0, x [M, K] fp16/bf16 and weight [N, K] int8 are contiguous and
// 16-byte aligned on it, M, N, K > 0, K % 16 == 0 and N % 8 == 0.
bool int8_weight_linear_sm90_applies(const at::Tensor& x2d, const at::Tensor& weight_int8);

// out [M, N] = x [M, K] . weight [N, K]^T * weight_absmax [N] / 127 + bias [N]: each int8
// weight is widened exactly to x's dtype, products sum in fp32, one rounding to out (x's dtype,
// contiguous, 16-byte aligned). bias (x's dtype, 16-byte aligned) may be undefined. Requires
// int8_weight_linear_sm90_applies.
void int8_weight_linear_sm90(const at::Tensor& x2d, const at::Tensor& weight_int8,
                             const at::Tensor& weight_absmax, const at::Tensor& bias,
                             at::Tensor& out);

}  // namespace llmint8
