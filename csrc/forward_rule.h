// Which path an int8 layer's forward (the llm_int8_linear op) takes, shared by every device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "checks.h"

namespace llmint8 {

// Up to this many rows a layer is bound by reading its weight on any device: int8_weight_linear
// (16-bit activations times the int8 weight) beats the LLM.int8 decomposition there, and is more
// accurate (only the weight is rounded).
constexpr int64_t kSmallBatchRows = 16;

// Up to this many rows where a tensor-core int8-weight kernel runs (Hopper:
// int8_weight_linear_sm90.cu): 128 rows make 256 flops per weight byte, still under the ~300 at
// which an H100's 16-bit tensor cores stop waiting for memory. Elsewhere only the streaming kernel
// could take the rows past 16, and it loses to the decomposition from 32 to 96 rows depending on
// the layer (H100: benchmarks/results/sweep_w8a16_rows_h100.json against bench_linear_h100_v5).
constexpr int64_t kTensorCoreWeightOnlyRows = 128;

// Past that, up to kSmallProductRows rows, the same kernel still wins where the layer's product
// is small: there the decomposition's fixed cost (its split launch, ~10 us with the grid barrier)
// outweighs what 16-bit tensor cores lose to int8 ones. H100, graph time, threshold 6: the
// int8-weight kernel won at every M * N * K <= 2^33 measured (M = 256 to 1024 on eight layer
// shapes; with 256-row tiles past one wave also M = 2048, e.g. 1024->4096: 33.3 against 37.0 us);
// at 2^34 the two traded a few percent either way (1024->8192 at M = 2048: 59.2 against 55.3 us),
// and at 2^35 the decomposition won everywhere (benchmarks/NOTES.md v13, v14). Past 2048 rows it
// is unmeasured.
constexpr int64_t kSmallProductRows = 2048;
constexpr int64_t kSmallProductMacs = int64_t(1) << 33;

// Whether rows x [K] times an [N, K] weight take the tensor-core int8-weight kernel where it runs.
inline bool fits_tensor_core_weight_only(int64_t rows, int64_t n_dim, int64_t k_dim) {
  if (rows <= kTensorCoreWeightOnlyRows) return true;
  // n_dim * k_dim fits in int64 (each is below 2^31); the product with rows might not.
  return rows <= kSmallProductRows && n_dim * k_dim <= kSmallProductMacs / rows;
}

// Whether x [*, K] takes int8_weight_linear on every device: a small batch, or K = 0 (nothing to
// quantize).
inline bool is_small_batch(const at::Tensor& x) {
  return leading_rows(x) <= kSmallBatchRows || x.size(-1) == 0;
}

}  // namespace llmint8
