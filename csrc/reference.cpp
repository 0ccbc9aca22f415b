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

}  // namespace llmint8
