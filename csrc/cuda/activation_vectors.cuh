// Device helpers for kernels that read activations in 16-byte vectors: loads, outlier tests and
// row quantization shared by the op kernels (ops_cuda.cu) and the fused split (split_and_quantize.cu).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "../core/llmint8_core.h"

namespace llmint8 {

constexpr int kWarpSize = 32;
constexpr int kBitsPerWord = 32;
// Activations move in 16-byte accesses, the widest a thread can issue.
constexpr int kVectorBytes = 16;

LLMINT8_HOST_DEVICE int64_t blocks_for(int64_t work, int64_t per_block) { return (work + per_block - 1) / per_block; }

// kWidth consecutive elements moved as one memory access.
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth) Packed {
  T values[kWidth];
};

template <typename T>
constexpr int kVectorWidth = kVectorBytes / sizeof(T);

// Calls launch(std::integral_constant<int, width>) with the widest access x [*, cols] allows:
// whole 16-byte vectors need every row to start 16-byte aligned, so cols a multiple of the
// vector width and an aligned base (a contiguous slice may start anywhere); else one element.
template <typename T, typename Launch>
void with_access_width(const T* x, int64_t cols, Launch&& launch) {
  const bool vectorizable = cols % kVectorWidth<T> == 0 && reinterpret_cast<uintptr_t>(x) % kVectorBytes == 0;
  if (vectorizable) {
    launch(std::integral_constant<int, kVectorWidth<T>>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

// A 16-bit or fp32 element as fp32. bf16 widens by a shift of its bits: through c10's
// conversion nvcc gave the bf16 quantize kernel (8 vectors per thread) 98 registers per thread
// against fp16's 62, and it ran 1.8x slower (69 vs 39 us at 2048 x 14336 on an H100).
template <typename T>
__device__ __forceinline__ float widen(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float widen(c10::BFloat16 v) {
  return __uint_as_float(uint32_t(v.x) << 16);
}

// Bit j set where element j of v is an outlier.
template <typename T, int kWidth>
__device__ __forceinline__ uint32_t outlier_bits(const Packed<T, kWidth>& v, float threshold) {
  uint32_t bits = 0;
#pragma unroll
  for (int j = 0; j < kWidth; ++j) {
    bits |= uint32_t(is_outlier_value(widen(v.values[j]), threshold)) << j;
  }
  return bits;
}

// Max over the block (blockDim.x a multiple of the warp size, at most 1024); valid in thread 0.
// Inputs are >= 0 and never NaN, so 0 is a neutral fill and the order of the maxima is free.
__device__ __forceinline__ float block_max(float value, float* warp_maxima) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) warp_maxima[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < blockDim.x / kWarpSize ? warp_maxima[lane] : 0.0f;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
  }
  return value;
}

// Largest |element| of v among those whose bit in excluded is clear (NaN never wins, as in the
// CPU loop).
template <typename T, int kWidth>
__device__ __forceinline__ float kept_absmax(const Packed<T, kWidth>& v, uint32_t excluded) {
  float absmax = 0.0f;
#pragma unroll
  for (int j = 0; j < kWidth; ++j) {
    if (!((excluded >> j) & 1u)) absmax = fmaxf(absmax, fabsf(widen(v.values[j])));
  }
  return absmax;
}

template <typename T, int kWidth>
__device__ __forceinline__ Packed<int8_t, kWidth> quantize_packed(const Packed<T, kWidth>& v,
                                                                  uint32_t excluded, float step) {
  Packed<int8_t, kWidth> q;
#pragma unroll
  for (int j = 0; j < kWidth; ++j) {
    q.values[j] = (excluded >> j) & 1u ? int8_t{0} : quantize_value(widen(v.values[j]), step);
  }
  return q;
}

}  // namespace llmint8
