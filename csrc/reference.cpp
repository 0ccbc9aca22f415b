// Device-agnostic implementations from ATen ops: the CPU kernels of fused ops and CUDA fallbacks.
#include "reference.h"

#include <ATen/ATen.h>

#include "core/llmint8_core.h"

namespace llmint8 {

at::Tensor int8_weight_linear_reference(const at::Tensor& x, const at::Tensor& weight_int8,
                                        const at::Tensor& weight_absmax,
                                        const std::optional<at::Tensor>& bias) {
  const auto weight = weight_int8.to(at::kFloat) * (weight_absmax / kInt8Max).unsqueeze(1);
  const auto bias_f32 = bias.has_value() ? std::optional<at::Tensor>(bias->to(at::kFloat)) : std::nullopt;
  return at::linear(x.to(at::kFloat), weight, bias_f32).to(x.scalar_type());
}

at::Tensor zero_pad_columns(const at::Tensor& t2d, int64_t multiple) {
  const int64_t k = t2d.size(1);
  const int64_t padded = blocks_for(k, multiple) * multiple;
  return padded == k ? t2d : at::constant_pad_nd(t2d, {0, padded - k}, 0);
}

}  // namespace llmint8
