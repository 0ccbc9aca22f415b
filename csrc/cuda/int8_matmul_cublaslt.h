// int8 x int8 -> int32 matrix product on CUDA through cuBLASLt.
#pragma once

#include <ATen/core/Tensor.h>

namespace llmint8 {

// a int8 [*, K], b int8 [N, K] -> int32 [*, N] = a @ b^T, exact for every K.
at::Tensor int8_matmul_cuda(const at::Tensor& a, const at::Tensor& b);

}  // namespace llmint8
