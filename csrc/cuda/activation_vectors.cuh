// Device helpers shared by the op kernels (ops_cuda.cu) and the fused split (split_and_quantize.cu):
// 16-byte activation loads, outlier tests, row quantization and the weight's outlier-column gather.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "../core/llmint8_core.h"
#include "../core/outlier_layout.h"

namespace llmint8 {

constexpr int kWarpSize = 32;
constexpr int kBitsPerWord = 32;
// Activations move in 16-byte accesses, the widest a thread can issue.
constexpr int kVectorBytes = 16;

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

// Independent loads each thread issues before using any: enough bytes in flight to cover the
// memory latency at full occupancy.
constexpr int kRowsInFlight = 4;

// The outlier bits of one column group of x (viewed as [rows, groups] vectors; `column` is the
// group's vector in row 0) over rows [first_row, end_row), this thread taking every row_lanes-th
// from first_row + row_lane. Threshold > 0: rows past the end load as zero, never an outlier.
template <typename T, int kWidth>
__device__ __forceinline__ uint32_t column_outlier_bits(const Packed<T, kWidth>* column, int64_t groups,
                                                        int64_t first_row, int64_t end_row, int row_lane,
                                                        int row_lanes, float threshold) {
  uint32_t found = 0;
  for (int64_t row = first_row + row_lane; row < end_row; row += kRowsInFlight * row_lanes) {
    Packed<T, kWidth> loaded[kRowsInFlight] = {};
#pragma unroll
    for (int i = 0; i < kRowsInFlight; ++i) {
      const int64_t r = row + i * row_lanes;
      if (r < end_row) loaded[i] = column[r * groups];
    }
#pragma unroll
    for (int i = 0; i < kRowsInFlight; ++i) found |= outlier_bits(loaded[i], threshold);
  }
  return found;
}

// Bit j: whether column v * kWidth + j is set in a column bitmask (bit c % 32 of word c / 32).
template <int kWidth>
__device__ __forceinline__ uint32_t vector_bits(const uint32_t* mask, int64_t v) {
  const int64_t col = v * kWidth;
  return (mask[col / kBitsPerWord] >> (col % kBitsPerWord)) & ((1u << kWidth) - 1u);
}

// Sets vector_bits(mask, v) |= bits, atomically: a vector's bits never straddle two words.
template <int kWidth>
__device__ __forceinline__ void set_vector_bits(uint32_t* mask, int64_t v, uint32_t bits) {
  const int64_t col = v * kWidth;
  atomicOr(&mask[col / kBitsPerWord], bits << (col % kBitsPerWord));
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

// One row of x as kWidth-element vectors, walked by `threads` threads of which this one is `lane`:
// the first kCached * threads vectors stay in registers between the absmax pass and the quantize
// pass, so that x is read from memory once; longer rows re-read the rest, mostly from L1/L2.
// excluded(v) gives vector v's bits of columns left out of both passes.
template <typename T, int kWidth, int kCached>
struct CachedRow {
  using Vector = Packed<T, kWidth>;
  const Vector* vectors;
  int64_t count;
  int lane, threads;
  Vector cached[kCached];

  __device__ __forceinline__ CachedRow(const T* row, int64_t cols, int lane, int threads)
      : vectors(reinterpret_cast<const Vector*>(row)), count(cols / kWidth), lane(lane), threads(threads) {}

  __device__ __forceinline__ int64_t cached_index(int i) const { return lane + int64_t(i) * threads; }
  __device__ __forceinline__ int64_t first_uncached() const { return int64_t(kCached) * threads + lane; }

  __device__ __forceinline__ void load() {
#pragma unroll
    for (int i = 0; i < kCached; ++i) {
      if (cached_index(i) < count) cached[i] = vectors[cached_index(i)];
    }
  }

  // visit(v, vector) for each of this thread's vectors: the cached ones from registers, the rest
  // loaded again.
  template <typename Visit>
  __device__ __forceinline__ void for_each(Visit visit) const {
#pragma unroll
    for (int i = 0; i < kCached; ++i) {
      if (cached_index(i) < count) visit(cached_index(i), cached[i]);
    }
    for (int64_t v = first_uncached(); v < count; v += threads) {
      const Vector loaded = vectors[v];  // a copy, so that it is one wide load, not kWidth narrow ones
      visit(v, loaded);
    }
  }

  // This thread's share of the largest |kept element|.
  template <typename Excluded>
  __device__ __forceinline__ float kept_absmax_part(Excluded excluded) const {
    float absmax = 0.0f;
    for_each([&](int64_t v, const Vector& vector) { absmax = fmaxf(absmax, kept_absmax(vector, excluded(v))); });
    return absmax;
  }

  // This thread's share of the row quantized into q (the row's first int8 value).
  template <typename Excluded>
  __device__ __forceinline__ void store_quantized(Excluded excluded, float step, int8_t* q) const {
    auto* q_vectors = reinterpret_cast<Packed<int8_t, kWidth>*>(q);
    for_each([&](int64_t v, const Vector& vector) { q_vectors[v] = quantize_packed(vector, excluded(v), step); });
  }
};

// The weight's outlier columns, dequantized, into w_cols laid out by `layout`: the grid's threads
// walk the buffer's first `elements` values in storage order, so that stores are contiguous.
// column_of_slot(slot) names the column a slot holds, or -1 for an unused slot, which gets zero
// (x_outliers is zero there too, but 0 * garbage could be NaN).
template <typename W, typename ColumnOfSlot>
__device__ __forceinline__ void gather_weight_columns(const OutlierLayout& layout, int64_t elements,
                                                      ColumnOfSlot column_of_slot, const int8_t* __restrict__ weight,
                                                      int64_t k_dim, const float* __restrict__ weight_scale,
                                                      W* __restrict__ w_cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < elements; i += int64_t(gridDim.x) * blockDim.x) {
    const auto at = layout.w_position(i);
    if (at.n >= layout.n_dim) continue;  // fragment order's padding
    const int32_t col = column_of_slot(at.slot);
    w_cols[i] = static_cast<W>(col >= 0 ? static_cast<float>(weight[at.n * k_dim + col]) * (weight_scale[at.n] / kInt8Max)
                                        : 0.0f);
  }
}

}  // namespace llmint8
