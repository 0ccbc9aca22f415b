// Small-batch fast path on CUDA: 16-bit activations times the int8 weight on tensor cores.
#pragma once

#include <ATen/core/Tensor.h>

namespace llmint8 {

// Whether the tensor-core kernel takes these operands (fp16/bf16, K % 16 == 0, aligned).
bool int8_weight_linear_kernel_applies(const at::Tensor& x, const at::Tensor& weight_int8);

// out [M, N] = (x2d [M, K] @ weight_int8^T) * weight_absmax / 127 + bias, written into out. bias is
// contiguous in fp32, fp16 or bf16, or undefined.
at::Tensor int8_weight_linear_cuda_kernel(const at::Tensor& x2d, const at::Tensor& weight_int8,
                                          const at::Tensor& weight_absmax, const at::Tensor& bias,
                                          at::Tensor out);

}  // namespace llmint8
