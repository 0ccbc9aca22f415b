// llmint8 core: torch-free LLM.int8 arithmetic on raw pointers, shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LLMINT8_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LLMINT8_HOST_DEVICE inline
#endif

namespace llmint8 {

// How many blocks of per_block it takes to cover work, rounding up.
LLMINT8_HOST_DEVICE constexpr int64_t blocks_for(int64_t work, int64_t per_block) {
  return (work + per_block - 1) / per_block;
}

// Quantized values live in [-127, 127]; -128 is never produced so that negation is exact.
constexpr float kInt8Max = 127.0f;
// Dequantization divides by 127 once per operand scale.
constexpr float kInvInt8MaxSquared = 1.0f / (127.0f * 127.0f);

// 127 / absmax in fp32, the one definition CPU and CUDA share so that their int8 values agree
// bit for bit. An all-zero (or all-excluded) row has absmax 0 and maps everything to 0.
LLMINT8_HOST_DEVICE float inverse_step(float absmax) {
  return absmax > 0.0f ? kInt8Max / absmax : 0.0f;
}

// round-half-to-even(v * inverse_step), clamped to [-127, 127]; NaN maps to 0.
LLMINT8_HOST_DEVICE int8_t quantize_value(float v, float inverse_step_value) {
  float scaled = rintf(v * inverse_step_value);
  if (!(scaled == scaled)) return 0;
  scaled = scaled > kInt8Max ? kInt8Max : scaled;
  scaled = scaled < -kInt8Max ? -kInt8Max : scaled;
  return static_cast<int8_t>(scaled);
}

// acc * row_absmax / 127^2 * col_absmax (+ bias), evaluated in fp32 in this exact order everywhere.
// The row's factor comes first so that a GEMM epilogue computes it once per row, not per element.
LLMINT8_HOST_DEVICE float dequantize_value(int32_t acc, float row_absmax, float col_absmax,
                                           float bias) {
  return static_cast<float>(acc) * (row_absmax * kInvInt8MaxSquared) * col_absmax + bias;
}

// |v| >= threshold, with threshold 0 meaning "no outliers" (plain W8A8).
LLMINT8_HOST_DEVICE bool is_outlier_value(float v, float threshold) {
  return threshold > 0.0f && fabsf(v) >= threshold;
}

// Marks (sets to 1) every column of x [rows, cols] holding an outlier. is_outlier must start zeroed.
template <typename T>
void mark_outlier_columns(const T* x, int64_t rows, int64_t cols, float threshold,
                          uint8_t* is_outlier) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      if (is_outlier_value(static_cast<float>(row[c]), threshold)) is_outlier[c] = 1;
    }
  }
}

// Writes the ascending indices of marked columns into outlier_cols[0, capacity), pads the rest
// with -1, and returns how many columns are marked (which may exceed capacity).
inline int32_t compact_outlier_columns(const uint8_t* is_outlier, int64_t cols, int64_t capacity,
                                       int32_t* outlier_cols) {
  int32_t count = 0;
  for (int64_t c = 0; c < cols; ++c) {
    if (!is_outlier[c]) continue;
    if (count < capacity) outlier_cols[count] = static_cast<int32_t>(c);
    ++count;
  }
  for (int64_t slot = count; slot < capacity; ++slot) outlier_cols[slot] = -1;
  return count;
}

// Quantizes one row with absmax over the columns not excluded; excluded columns are written as 0.
// excluded may be null (no exclusions).
template <typename T>
float quantize_row(const T* x, int64_t cols, const uint8_t* excluded, int8_t* q) {
  float absmax = 0.0f;
  for (int64_t c = 0; c < cols; ++c) {
    if (excluded && excluded[c]) continue;
    float magnitude = fabsf(static_cast<float>(x[c]));
    absmax = magnitude > absmax ? magnitude : absmax;
  }
  const float step = inverse_step(absmax);
  for (int64_t c = 0; c < cols; ++c) {
    q[c] = (excluded && excluded[c]) ? int8_t{0} : quantize_value(static_cast<float>(x[c]), step);
  }
  return absmax;
}

}  // namespace llmint8
