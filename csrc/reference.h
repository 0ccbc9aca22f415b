// Device-agnostic implementations from ATen ops: the CPU kernels of fused ops and CUDA fallbacks.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

namespace llmint8 {

// (x @ (weight_int8 * weight_absmax / 127)^T + bias) in fp32, returned in x's dtype.
at::Tensor int8_weight_linear_reference(const at::Tensor& x, const at::Tensor& weight_int8,
                                        const at::Tensor& weight_absmax,
                                        const std::optional<at::Tensor>& bias);

// t2d [rows, K] with zero columns appended up to a multiple of `multiple`: int8 GEMM kernels that
// need an aligned K stay exact, since zeros leave every dot product unchanged.
at::Tensor zero_pad_columns(const at::Tensor& t2d, int64_t multiple);

}  // namespace llmint8
