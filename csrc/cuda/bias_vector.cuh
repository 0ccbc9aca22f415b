// A bias read by kernels in the dtype its module holds it in (fp32, fp16 or bf16).
//
// Converting a 16-bit bias to fp32 before each launch costs a kernel launch of its own, which in a
// batch-1 decode step is as long as a small layer's whole product (one per linear layer, 192 per
// OPT-6.7B step). Widening each value where it is read gives the same fp32 number for free.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace llmint8 {

class BiasVector {
 public:
  // No bias: every element reads as 0.
  BiasVector() = default;

  // bias: contiguous [N] in fp32, fp16 or bf16, or undefined for none. The tensor must stay
  // alive until the kernels reading it have been launched.
  static BiasVector of(const at::Tensor& bias) {
    if (!bias.defined()) return {};
    TORCH_CHECK(bias.is_contiguous(), "bias must be contiguous here");
    switch (bias.scalar_type()) {
      case at::kFloat: return {bias.const_data_ptr(), Type::kFloat};
      case at::kHalf: return {bias.const_data_ptr(), Type::kHalf};
      case at::kBFloat16: return {bias.const_data_ptr(), Type::kBFloat16};
      default: TORCH_CHECK(false, "bias must be float32, float16 or bfloat16, got ", bias.scalar_type());
    }
  }

  __device__ __forceinline__ float operator[](int64_t n) const {
    switch (type_) {
      case Type::kFloat: return static_cast<const float*>(data_)[n];
      case Type::kHalf: return __half2float(static_cast<const __half*>(data_)[n]);
      case Type::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(data_)[n]);
      default: return 0.0f;
    }
  }

 private:
  enum class Type : uint8_t { kNone, kFloat, kHalf, kBFloat16 };
  BiasVector(const void* data, Type type) : data_(data), type_(type) {}

  const void* data_ = nullptr;
  Type type_ = Type::kNone;
};

}  // namespace llmint8
