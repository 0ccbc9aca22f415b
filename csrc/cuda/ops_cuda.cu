// CUDA kernels for the llmint8 operators (the int8 product itself lives in int8_matmul_cublaslt.cu).
#include <ATen/ATen.h>
#include "../dispatch.h"
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <type_traits>
#include <utility>

#include "../checks.h"
#include "../core/llmint8_core.h"
#include "../forward_rule.h"
#include "../reference.h"
#include "activation_vectors.cuh"
#include "bias_vector.cuh"
#include "grid_dependency.cuh"
#include "int8_gemm_sm90.h"
#include "int8_matmul_cublaslt.h"
#include "int8_weight_linear.h"
#include "int8_weight_linear_sm90.h"
#include "occupancy.h"
#include "split_and_quantize.h"

namespace llmint8 {
namespace {

constexpr int kThreads = 256;
// The exclusion bitmask lives in shared memory, whose default per-block limit is 48 KiB.
constexpr size_t kMaxExclusionMaskBytes = 48 * 1024 - 1024;

cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// The bias for our own kernels, which widen it where they read it (bias_vector.cuh).
at::Tensor contiguous_bias(const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? bias->contiguous() : at::Tensor();
}

// The bias for the CUTLASS epilogues, which read it in the output's dtype in 16-byte vectors: the
// module's own tensor when it already is that (no launch), else a converted or aligned copy.
at::Tensor epilogue_bias(const std::optional<at::Tensor>& bias, at::ScalarType dtype) {
  if (!bias.has_value()) return at::Tensor();
  auto converted = bias->to(dtype).contiguous();
  return reinterpret_cast<uintptr_t>(converted.const_data_ptr()) % kVectorBytes == 0 ? converted
                                                                                     : converted.clone();
}

// Grid-stride launches are capped so huge tensors reuse threads instead of making giant grids.
int64_t grid_stride_blocks(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>(blocks_for(work, kThreads), 65535));
}

// Threads of a block side by side along a row (a power of two, so that the rest stack along the
// rows): all of them for wide rows, just enough to cover narrow ones so that few threads idle.
int column_lanes_for(int64_t width) {
  int lanes = 1;
  while (lanes < kThreads && lanes < width) lanes *= 2;
  return lanes;
}

// Each thread owns one group of kWidth consecutive columns (x viewed as [rows, groups] vectors)
// and walks its block's chunk of rows, together with the other threads stacked on the same
// columns. The block ORs their findings in shared memory and writes each flag once, only where
// set, so the output sees a handful of stores instead of one per row.
template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads)
mark_outlier_columns_kernel(const T* __restrict__ x, int64_t rows, int64_t groups, int column_lanes,
                            int64_t rows_per_block, float threshold,
                            uint8_t* __restrict__ is_outlier) {
  __shared__ uint32_t found_in_block[kThreads];
  const int column_lane = threadIdx.x % column_lanes, row_lane = threadIdx.x / column_lanes;
  const int row_lanes = kThreads / column_lanes;
  const int64_t group = blockIdx.x * int64_t(column_lanes) + column_lane;
  const bool active = group < groups;  // no early return: every thread takes part in the barriers
  if (row_lane == 0) found_in_block[column_lane] = 0;
  __syncthreads();

  uint32_t found = 0;
  if (active) {
    const int64_t first_row = blockIdx.y * rows_per_block;
    found = column_outlier_bits(reinterpret_cast<const Packed<T, kWidth>*>(x) + group, groups, first_row,
                                min(rows, first_row + rows_per_block), row_lane, row_lanes, threshold);
  }
  if (found) atomicOr(&found_in_block[column_lane], found);
  __syncthreads();
  if (row_lane == 0 && active) {
    const uint32_t bits = found_in_block[column_lane];
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      // Every writer stores the same 1, so stores from other row blocks are benign.
      if ((bits >> j) & 1u) is_outlier[group * kWidth + j] = 1;
    }
  }
}

// One wave of blocks: a column block is one block's width of column groups, and the rows are cut
// into as many chunks as the remaining resident blocks, so that M = 2048 already fills every SM
// while large M gives each thread a long, latency-hiding walk down its columns.
template <typename T, int kWidth>
void launch_mark_outlier_columns(const T* x, int64_t rows, int64_t cols, float threshold,
                                 uint8_t* is_outlier, cudaStream_t stream) {
  const auto kernel = mark_outlier_columns_kernel<T, kWidth>;
  const int64_t groups = cols / kWidth;
  const int column_lanes = column_lanes_for(groups);
  const int row_lanes = kThreads / column_lanes;
  const int64_t column_blocks = blocks_for(groups, column_lanes);
  const int64_t row_blocks_wanted =
      std::max<int64_t>(1, resident_blocks(reinterpret_cast<const void*>(kernel), kThreads) / column_blocks);
  const int64_t rows_per_block = std::max<int64_t>(row_lanes, blocks_for(rows, row_blocks_wanted));
  const dim3 grid(column_blocks, blocks_for(rows, rows_per_block));
  kernel<<<grid, kThreads, 0, stream>>>(x, rows, groups, column_lanes, rows_per_block, threshold, is_outlier);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One block: a running exclusive scan over the column flags, writing ascending indices. A wide
// block with many flags per thread covers K <= 16384 in one tile, so one scan and one barrier.
constexpr int kCompactThreads = 1024;
constexpr int kFlagsPerThread = 16;

__global__ void __launch_bounds__(kCompactThreads)
compact_outlier_columns_kernel(const uint8_t* __restrict__ is_outlier, int64_t cols,
                               int64_t capacity, int32_t* __restrict__ outlier_cols,
                               int32_t* __restrict__ count) {
  using Scan = cub::BlockScan<int32_t, kCompactThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  int32_t seen = 0;
  for (int64_t base = 0; base < cols; base += kCompactThreads * kFlagsPerThread) {
    const int64_t first_col = base + int64_t(threadIdx.x) * kFlagsPerThread;
    int32_t flags[kFlagsPerThread], slots[kFlagsPerThread];
#pragma unroll
    for (int j = 0; j < kFlagsPerThread; ++j) flags[j] = first_col + j < cols ? is_outlier[first_col + j] : 0;
    int32_t tile_total;
    Scan(scan_storage).ExclusiveSum(flags, slots, tile_total);
#pragma unroll
    for (int j = 0; j < kFlagsPerThread; ++j) {
      const int64_t slot = seen + slots[j];
      if (flags[j] && slot < capacity) outlier_cols[slot] = static_cast<int32_t>(first_col + j);
    }
    seen += tile_total;
    __syncthreads();  // scan_storage is reused by the next tile
  }
  for (int64_t slot = seen + threadIdx.x; slot < capacity; slot += kCompactThreads) outlier_cols[slot] = -1;
  if (threadIdx.x == 0) *count = seen;
}

// The column indices outlier_split reports: outlier_cols int32 [capacity] (ascending, -1
// padded) and count int32 [] (every outlier column, which may exceed capacity).
struct OutlierColumns {
  at::Tensor cols;
  at::Tensor count;
};

OutlierColumns find_outlier_columns(const at::Tensor& x_contig, double threshold, int64_t capacity) {
  const int64_t rows = leading_rows(x_contig), cols = x_contig.size(-1);
  const auto stream = current_stream(x_contig);
  auto is_outlier = at::zeros({cols}, x_contig.options().dtype(at::kByte));
  // Threshold 0 marks nothing, so x need not be read at all.
  if (rows > 0 && cols > 0 && threshold > 0.0) {
    LLMINT8_DISPATCH_FLOAT_TYPES(x_contig.scalar_type(), "outlier_split", [&] {
      const auto* x = x_contig.const_data_ptr<scalar_t>();
      with_access_width(x, cols, [&](auto width) {
        launch_mark_outlier_columns<scalar_t, decltype(width)::value>(
            x, rows, cols, static_cast<float>(threshold), is_outlier.mutable_data_ptr<uint8_t>(), stream);
      });
    });
  }
  OutlierColumns found{at::empty({capacity}, x_contig.options().dtype(at::kInt)),
                       at::empty({}, x_contig.options().dtype(at::kInt))};
  compact_outlier_columns_kernel<<<1, kCompactThreads, 0, stream>>>(
      is_outlier.const_data_ptr<uint8_t>(), cols, capacity, found.cols.mutable_data_ptr<int32_t>(),
      found.count.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return found;
}

// x_outliers [rows, capacity], laid out like the mark kernel with slots for columns: each thread
// reads its slot's column index once and walks rows, with no division to find its element.
template <typename T>
__global__ void gather_outlier_columns_kernel(const T* __restrict__ x, int64_t rows, int64_t cols,
                                              const int32_t* __restrict__ outlier_cols,
                                              int64_t capacity, int column_lanes, T* __restrict__ x_outliers) {
  const int column_lane = threadIdx.x % column_lanes, row_lane = threadIdx.x / column_lanes;
  const int row_lanes = kThreads / column_lanes;
  const int64_t slot = blockIdx.x * int64_t(column_lanes) + column_lane;
  if (slot >= capacity) return;
  const int32_t col = outlier_cols[slot];
  for (int64_t row = blockIdx.y * int64_t(row_lanes) + row_lane; row < rows;
       row += int64_t(gridDim.y) * row_lanes) {
    x_outliers[row * capacity + slot] = col >= 0 ? x[row * cols + col] : static_cast<T>(0.0f);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> outlier_split_cuda(const at::Tensor& x,
                                                                  double threshold,
                                                                  int64_t capacity) {
  check_float_input(x, "x");
  check_outlier_arguments(threshold, capacity);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto x_contig = x.contiguous();
  const int64_t rows = leading_rows(x), cols = x.size(-1);
  const auto outliers = find_outlier_columns(x_contig, threshold, capacity);
  auto x_outliers = at::empty(with_last_dim(x, capacity), x.options());
  if (rows * capacity > 0) {
    const int column_lanes = column_lanes_for(capacity);
    const dim3 grid(blocks_for(capacity, column_lanes),
                    std::min<int64_t>(blocks_for(rows, kThreads / column_lanes), 65535));
    LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "outlier_split", [&] {
      gather_outlier_columns_kernel<<<grid, kThreads, 0, current_stream(x)>>>(
          x_contig.const_data_ptr<scalar_t>(), rows, cols, outliers.cols.const_data_ptr<int32_t>(),
          capacity, column_lanes, x_outliers.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {outliers.cols, outliers.count, x_outliers};
}

// A block keeps its row in registers between the absmax and the quantize pass, so that x is
// read from memory once: kCachedVectors vectors per thread and at most 4096 per block (K = 32768
// 16-bit or 16384 fp32 columns in 16-byte vectors). Longer rows re-read the rest, mostly from
// L1/L2.
constexpr int kMaxCachedVectorsPerBlock = 4096;
// Registers per thread the quantize kernel is held to, so that an SM fits 2048 of its threads
// (bf16 with 8 vectors per thread: 80 otherwise, with a few bytes of spills at 64).
constexpr int kQuantizeRegistersPerThread = 64;
constexpr int kRegistersPerSm = 65536;

// One block per row, x viewed as kWidth-element vectors: absmax over the columns not excluded,
// then quantize. Excluded columns arrive as an index list (-1 padded; anything outside [0, cols)
// is ignored, since checking it would need a host synchronization) and become a bitmask in
// shared memory. With x_outliers (nullable) the block also copies the listed columns of its row
// into x_outliers [rows, excluded_count] laid out by outlier_layout (zero for ignored entries and
// padded slots): outlier_split's gather, done while the row is in cache.
template <typename T, int kWidth, int kCachedVectors>
__global__ void __launch_bounds__(kMaxCachedVectorsPerBlock / kCachedVectors,
                                  kRegistersPerSm / kQuantizeRegistersPerThread /
                                      (kMaxCachedVectorsPerBlock / kCachedVectors))
quantize_rows_kernel(const T* __restrict__ x, int64_t cols, const int32_t* __restrict__ excluded_cols,
                     int64_t excluded_count, int8_t* __restrict__ q, float* __restrict__ row_absmax,
                     T* __restrict__ x_outliers, OutlierLayout outlier_layout) {
  static_assert(kBitsPerWord % kWidth == 0, "a vector's exclusion bits must share one word");
  extern __shared__ uint32_t excluded_bits[];
  __shared__ float warp_maxima[kMaxCachedVectorsPerBlock / kCachedVectors / kWarpSize];
  __shared__ float step;

  // The GEMM that reads q may start its prologue once this grid's last wave has started.
  let_next_grid_launch();
  const int64_t row = blockIdx.x;
  const T* x_row = x + row * cols;
  CachedRow<T, kWidth, kCachedVectors> cached_row(x_row, cols, threadIdx.x, blockDim.x);

  // The row's loads go out before the mask is built, so that their latency and that of reading
  // excluded_cols overlap.
  cached_row.load();

  const int64_t words = excluded_cols ? blocks_for(cols, kBitsPerWord) : 0;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) excluded_bits[w] = 0;
  __syncthreads();
  for (int64_t slot = threadIdx.x; slot < excluded_count; slot += blockDim.x) {
    const int32_t col = excluded_cols[slot];
    if (col >= 0 && col < cols) atomicOr(&excluded_bits[col / kBitsPerWord], 1u << (col % kBitsPerWord));
  }
  __syncthreads();
  auto excluded = [&](int64_t v) -> uint32_t { return words == 0 ? 0u : vector_bits<kWidth>(excluded_bits, v); };

  float absmax = cached_row.kept_absmax_part(excluded);

  if (x_outliers) {
    for (int64_t slot = threadIdx.x; slot < outlier_layout.stored_slots(); slot += blockDim.x) {
      const int32_t col = slot < excluded_count ? excluded_cols[slot] : -1;
      x_outliers[outlier_layout.x_index(row, slot)] = col >= 0 && col < cols ? x_row[col] : static_cast<T>(0.0f);
    }
  }

  absmax = block_max(absmax, warp_maxima);
  if (threadIdx.x == 0) {
    row_absmax[row] = absmax;
    step = inverse_step(absmax);
  }
  __syncthreads();
  cached_row.store_quantized(excluded, step, q + row * cols);
}

// Rows of up to this many vectors get 4 per thread, longer ones 8. Measured on an H100: 4 per
// thread wins at K = 4096 (more threads per row, shorter blocks), 8 at K = 14336, where 4 would
// need 448-thread blocks that only fit twice per SM and leave a quarter of the registers idle.
constexpr int64_t kMaxVectorsForShallowCache = 1024;

template <typename T, int kWidth, int kCachedVectors>
void launch_quantize_rows_kernel(const T* x, int64_t rows, int64_t cols, const int32_t* excluded,
                                 int64_t excluded_count, size_t shared_bytes, int8_t* q,
                                 float* absmax, T* x_outliers, const OutlierLayout& outlier_layout,
                                 cudaStream_t stream) {
  // As few warps as keep the row in registers: fewer barriers per row, more rows per SM.
  const int64_t threads_wanted = blocks_for(blocks_for(cols / kWidth, kCachedVectors), kWarpSize) * kWarpSize;
  const int threads = static_cast<int>(
      std::clamp<int64_t>(threads_wanted, kWarpSize, kMaxCachedVectorsPerBlock / kCachedVectors));
  quantize_rows_kernel<T, kWidth, kCachedVectors><<<rows, threads, shared_bytes, stream>>>(
      x, cols, excluded, excluded_count, q, absmax, x_outliers, outlier_layout);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Quantizes x_contig [*, K] row by row into q / absmax, excluding the columns listed in
// excluded_cols (undefined: none) and, where x_outliers is defined, copying those columns into it
// as outlier_layout places them.
void launch_quantize_rows(const at::Tensor& x_contig, const at::Tensor& excluded_cols, at::Tensor& q,
                          at::Tensor& absmax, const at::Tensor& x_outliers = at::Tensor(),
                          const OutlierLayout& outlier_layout = OutlierLayout()) {
  const int64_t rows = leading_rows(x_contig), cols = x_contig.size(-1);
  if (rows == 0) return;
  const int32_t* excluded = excluded_cols.defined() ? excluded_cols.const_data_ptr<int32_t>() : nullptr;
  const int64_t excluded_count = excluded_cols.defined() ? excluded_cols.numel() : 0;
  const size_t shared_bytes = excluded ? blocks_for(cols, kBitsPerWord) * sizeof(uint32_t) : 0;
  TORCH_CHECK(shared_bytes <= kMaxExclusionMaskBytes, "x's last dimension (", cols,
              ") is too large for outlier_cols on CUDA: at most ", kMaxExclusionMaskBytes * 8,
              " columns");
  LLMINT8_DISPATCH_FLOAT_TYPES(x_contig.scalar_type(), "quantize_rows", [&] {
    const auto* x = x_contig.const_data_ptr<scalar_t>();
    auto* outliers = x_outliers.defined() ? x_outliers.mutable_data_ptr<scalar_t>() : nullptr;
    with_access_width(x, cols, [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      auto* q_data = q.mutable_data_ptr<int8_t>();
      auto* absmax_data = absmax.mutable_data_ptr<float>();
      const auto stream = current_stream(x_contig);
      if (cols / kWidth <= kMaxVectorsForShallowCache) {
        launch_quantize_rows_kernel<scalar_t, kWidth, 4>(x, rows, cols, excluded, excluded_count, shared_bytes,
                                                         q_data, absmax_data, outliers, outlier_layout, stream);
      } else {
        launch_quantize_rows_kernel<scalar_t, kWidth, 8>(x, rows, cols, excluded, excluded_count, shared_bytes,
                                                         q_data, absmax_data, outliers, outlier_layout, stream);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cuda(const at::Tensor& x,
                                                      const std::optional<at::Tensor>& outlier_cols) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto absmax = at::empty(without_last_dim(x), x.options().dtype(at::kFloat));
  const auto cols_contig = outlier_cols.has_value() ? outlier_cols->contiguous() : at::Tensor();
  launch_quantize_rows(x.contiguous(), cols_contig, q, absmax);
  return {q, absmax};
}

std::tuple<at::Tensor, at::Tensor> quantize_rowwise_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& outlier_cols) {
  check_float_input(x, "x");
  check_outlier_cols(outlier_cols, x);
  return quantize_rows_cuda(x, outlier_cols);
}

std::tuple<at::Tensor, at::Tensor> quantize_colwise_cuda(const at::Tensor& weight) {
  check_float_input(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight must be 2D [N, K], got ", weight.dim(), "D");
  // Per output channel of W [N, K] is per row of W: the row quantizer with nothing excluded.
  return quantize_rows_cuda(weight, std::nullopt);
}

template <typename T>
__global__ void dequant_outer_kernel(const int32_t* __restrict__ acc, int64_t rows, int64_t cols,
                                     const float* __restrict__ row_absmax,
                                     const float* __restrict__ col_absmax, BiasVector bias,
                                     T* __restrict__ out) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % cols;
    const float value = dequantize_value(acc[i], row_absmax[i / cols], col_absmax[col], bias[col]);
    out[i] = static_cast<T>(value);
  }
}

at::Tensor dequant_outer_cuda(const at::Tensor& acc, const at::Tensor& row_absmax,
                              const at::Tensor& col_absmax, const std::optional<at::Tensor>& bias,
                              at::ScalarType out_dtype) {
  check_dequant_operands(acc, row_absmax, col_absmax, bias, out_dtype);
  const c10::cuda::CUDAGuard guard(acc.device());
  const int64_t rows = leading_rows(acc), cols = acc.size(-1);
  auto out = at::empty(acc.sizes(), acc.options().dtype(out_dtype));
  if (rows * cols == 0) return out;
  const auto acc_c = acc.contiguous();
  const auto row_c = row_absmax.contiguous();
  const auto col_c = col_absmax.contiguous();
  const auto bias_c = contiguous_bias(bias);
  LLMINT8_DISPATCH_FLOAT_TYPES(out_dtype, "dequant_outer", [&] {
    dequant_outer_kernel<<<grid_stride_blocks(rows * cols), kThreads, 0, current_stream(acc)>>>(
        acc_c.const_data_ptr<int32_t>(), rows, cols, row_c.const_data_ptr<float>(),
        col_c.const_data_ptr<float>(), BiasVector::of(bias_c), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// w_cols [capacity, N]: the weight columns named by outlier_cols, dequantized in fp32 (zero for
// padded slots) and stored as Out where layout places them, walked in storage order (row-major:
// transposed, so that readers go coalesced along N).
template <typename Out>
__global__ void gather_weight_columns_kernel(const int8_t* __restrict__ w, int64_t k_dim,
                                             const float* __restrict__ w_absmax,
                                             const int32_t* __restrict__ outlier_cols, OutlierLayout layout,
                                             Out* __restrict__ w_cols) {
  gather_weight_columns(
      layout, layout.w_elements(),
      [&](int64_t slot) { return slot < layout.capacity ? outlier_cols[slot] : -1; }, w, k_dim, w_absmax, w_cols);
}

// Rows per thread in the fused epilogue: each weight-column value is loaded once into a register
// and reused for this many rows, instead of once per output element.
constexpr int kEpilogueRows = 16;
constexpr int kSlotsPerPass = 8;

// dequant_outer plus the outlier columns' 16-bit product, in one pass over the int32 result.
// The number of outlier slots used is read on the device, so the host never waits for it. Each
// pass stages a 16-row x 8-slot tile of x_outliers in shared memory as fp32 (one load and
// conversion per block instead of per thread); padded entries are zeros, so the inner product
// needs no predicates.
template <typename T>
__global__ void dequant_with_outliers_kernel(const int32_t* __restrict__ acc, int64_t rows,
                                             int64_t n_dim, const float* __restrict__ row_absmax,
                                             const float* __restrict__ col_absmax, BiasVector bias,
                                             const T* __restrict__ x_outliers,
                                             const float* __restrict__ w_cols,
                                             const int32_t* __restrict__ count, int64_t capacity,
                                             T* __restrict__ out) {
  __shared__ float x_tile[kEpilogueRows][kSlotsPerPass];
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const bool active = n < n_dim;  // no early return: every thread takes part in the barriers
  const int64_t used = x_outliers ? min(int64_t(*count), capacity) : 0;
  const float column_scale = active ? col_absmax[n] : 0.0f;
  const float column_bias = active ? bias[n] : 0.0f;
  for (int64_t m_base = blockIdx.y * int64_t(kEpilogueRows); m_base < rows;
       m_base += int64_t(gridDim.y) * kEpilogueRows) {
    const int row_count = static_cast<int>(min(int64_t(kEpilogueRows), rows - m_base));
    float value[kEpilogueRows];
#pragma unroll
    for (int i = 0; i < kEpilogueRows; ++i) {
      const int64_t m = m_base + i;
      value[i] = active && i < row_count
                     ? dequantize_value(acc[m * n_dim + n], row_absmax[m], column_scale, column_bias)
                     : 0.0f;
    }
    for (int64_t first = 0; first < used; first += kSlotsPerPass) {
      __syncthreads();  // the previous pass has finished reading x_tile
      if (threadIdx.x < kEpilogueRows * kSlotsPerPass) {
        const int i = threadIdx.x / kSlotsPerPass, j = threadIdx.x % kSlotsPerPass;
        x_tile[i][j] = i < row_count && first + j < used
                           ? static_cast<float>(x_outliers[(m_base + i) * capacity + first + j])
                           : 0.0f;
      }
      __syncthreads();
      float weight[kSlotsPerPass];
#pragma unroll
      for (int j = 0; j < kSlotsPerPass; ++j) {
        weight[j] = active && first + j < used ? w_cols[(first + j) * n_dim + n] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kEpilogueRows; ++i) {
#pragma unroll
        for (int j = 0; j < kSlotsPerPass; ++j) value[i] += x_tile[i][j] * weight[j];
      }
    }
    if (!active) continue;
#pragma unroll
    for (int i = 0; i < kEpilogueRows; ++i) {
      if (i < row_count) out[(m_base + i) * n_dim + n] = static_cast<T>(value[i]);
    }
  }
}

// The weight columns named by outlier_cols, dequantized into w_cols (of its dtype) as layout places them.
void gather_weight_columns(const at::Tensor& weight, const at::Tensor& weight_scale, const at::Tensor& outlier_cols,
                           const OutlierLayout& layout, at::Tensor& w_cols) {
  if (w_cols.numel() == 0) return;
  LLMINT8_DISPATCH_FLOAT_TYPES(w_cols.scalar_type(), "gather_weight_columns", [&] {
    gather_weight_columns_kernel<<<grid_stride_blocks(layout.w_elements()), kThreads, 0, current_stream(weight)>>>(
        weight.const_data_ptr<int8_t>(), weight.size(1), weight_scale.const_data_ptr<float>(),
        outlier_cols.const_data_ptr<int32_t>(), layout, w_cols.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Whether int8_linear splits outlier columns off x at all: a threshold that can mark one and a
// slot to put it in.
bool splits_outliers(double threshold, int64_t capacity) { return threshold > 0.0 && capacity > 0; }

// x's split and quantization into x_int8 (int8, x's shape), with the weight's outlier columns (in
// w_cols_dtype) gathered for the GEMM side, both outlier operands laid out by outlier_layout (whose
// capacity is the split's): one cooperative launch where it applies (split_and_quantize.cu), else
// mark -> compact -> quantize (which gathers x_outliers while it reads every row) -> weight gather.
QuantizedActivations quantize_activations(const at::Tensor& x, double threshold, const OutlierLayout& outlier_layout,
                                          const at::Tensor& weight, const at::Tensor& weight_scale,
                                          at::ScalarType w_cols_dtype, at::Tensor x_int8) {
  const int64_t capacity = outlier_layout.capacity;
  const auto x_contig = x.contiguous();
  QuantizedActivations a;
  a.x_int8 = std::move(x_int8);
  a.x_absmax = at::empty(without_last_dim(x), x.options().dtype(at::kFloat));
  if (!splits_outliers(threshold, capacity)) {
    launch_quantize_rows(x_contig, a.outlier_cols, a.x_int8, a.x_absmax);
    return a;
  }
  a.outlier_layout = outlier_layout;
  a.x_outliers = at::empty({outlier_layout.x_elements(leading_rows(x))}, x.options());
  a.w_cols = at::empty({outlier_layout.w_elements()}, weight_scale.options().dtype(w_cols_dtype));
  if (split_and_quantize_applies(x_contig, capacity)) {
    a.outlier_cols = at::empty({capacity}, x.options().dtype(at::kInt));
    a.outlier_count = at::empty({}, x.options().dtype(at::kInt));
    split_and_quantize(x_contig, threshold, weight, weight_scale, a);
    return a;
  }
  auto outliers = find_outlier_columns(x_contig, threshold, capacity);
  a.outlier_cols = std::move(outliers.cols);
  a.outlier_count = std::move(outliers.count);
  launch_quantize_rows(x_contig, a.outlier_cols, a.x_int8, a.x_absmax, a.x_outliers, outlier_layout);
  gather_weight_columns(weight, weight_scale, a.outlier_cols, outlier_layout, a.w_cols);
  return a;
}

// The GEMM side of int8_linear, the step another int8 GEMM can replace: out [*, N] =
// dequant(a.x_int8 @ weight_int8^T) + bias + a.x_outliers @ (weight's outlier columns)^T.
// weight_int8, weight_scale and bias (any float dtype, or undefined) arrive contiguous.
void int8_gemm_with_outliers(const QuantizedActivations& a, const at::Tensor& weight_int8,
                             const at::Tensor& weight_scale, const at::Tensor& bias, at::Tensor& out) {
  const int64_t rows = leading_rows(a.x_int8), n_dim = weight_int8.size(0);
  const auto acc = int8_matmul_cuda(a.x_int8, weight_int8);
  const int64_t capacity = a.has_outliers() ? a.outlier_cols.numel() : 0;
  const dim3 grid(blocks_for(n_dim, kThreads), std::min<int64_t>(blocks_for(rows, kEpilogueRows), 65535));
  LLMINT8_DISPATCH_FLOAT_TYPES(out.scalar_type(), "int8_linear", [&] {
    dequant_with_outliers_kernel<scalar_t><<<grid, kThreads, 0, current_stream(out)>>>(
        acc.const_data_ptr<int32_t>(), rows, n_dim, a.x_absmax.const_data_ptr<float>(),
        weight_scale.const_data_ptr<float>(), BiasVector::of(bias),
        a.has_outliers() ? a.x_outliers.const_data_ptr<scalar_t>() : nullptr,
        a.has_outliers() ? a.w_cols.const_data_ptr<float>() : nullptr,
        a.has_outliers() ? a.outlier_count.const_data_ptr<int32_t>() : nullptr, capacity,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The same result on Hopper with the dequantization and the outlier columns' product inside the
// int8 GEMM's epilogue, so neither the int32 product nor an [M, N] outlier addend goes to memory.
void int8_gemm_with_outliers_sm90(const QuantizedActivations& a, const at::Tensor& weight_int8,
                                  const at::Tensor& weight_scale, const at::Tensor& bias, at::Tensor& out) {
  const int64_t rows = leading_rows(a.x_int8), n_dim = weight_int8.size(0);
  auto out2d = out.view({rows, n_dim});
  OutlierProductOperands outliers;
  if (a.has_outliers()) outliers = {a.x_outliers, a.w_cols, a.outlier_count, a.outlier_layout};
  int8_scaled_gemm_sm90(a.x_int8.view({rows, -1}), weight_int8, a.x_absmax.view({rows}), weight_scale,
                        bias, outliers, out2d);
}

// The int8_linear op on operands and arguments already checked (check_int8_linear_arguments).
at::Tensor int8_linear_checked(const at::Tensor& x, const at::Tensor& weight_int8, const at::Tensor& weight_absmax,
                               const std::optional<at::Tensor>& bias, double threshold, int64_t capacity) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(with_last_dim(x, weight_int8.size(0)), x.options());
  if (out.numel() == 0) return out;
  const auto weight = weight_int8.contiguous();
  const auto weight_scale = weight_absmax.contiguous();
  auto x_int8 = at::empty(x.sizes(), x.options().dtype(at::kChar));
  // The Hopper epilogue multiplies the outlier columns in the output's dtype, our own kernel in fp32.
  const bool fused_epilogue = int8_scaled_gemm_sm90_applies(x_int8.view({leading_rows(x), x.size(-1)}), weight,
                                                            out.scalar_type()) &&
                              (!splits_outliers(threshold, capacity) || capacity <= kSm90MaxOutlierSlots);
  const int64_t n_dim = weight.size(0);
  const auto outlier_layout = fused_epilogue ? sm90_outlier_layout(leading_rows(x), n_dim, capacity)
                                             : OutlierLayout::row_major(capacity, n_dim);
  const auto activations = quantize_activations(x, threshold, outlier_layout, weight, weight_scale,
                                                fused_epilogue ? out.scalar_type() : at::kFloat, std::move(x_int8));
  if (fused_epilogue) {
    const auto bias_out = epilogue_bias(bias, out.scalar_type());
    int8_gemm_with_outliers_sm90(activations, weight, weight_scale, bias_out, out);
  } else {
    int8_gemm_with_outliers(activations, weight, weight_scale, contiguous_bias(bias), out);
  }
  return out;
}

at::Tensor int8_linear_cuda(const at::Tensor& x, const at::Tensor& weight_int8,
                            const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias,
                            double threshold, int64_t capacity) {
  check_int8_linear_arguments(x, weight_int8, weight_absmax, bias, threshold, capacity);
  return int8_linear_checked(x, weight_int8, weight_absmax, bias, threshold, capacity);
}

// Up to one 16-row tile the streaming kernel (int8_weight_linear.cu) reads the weight fastest;
// above, Hopper's CUTLASS kernel multiplies each weight tile it loads with up to 256 rows.
constexpr int64_t kStreamingKernelMaxRows = 16;

// The int8_weight_linear op on operands already checked (check_int8_weight_operands).
at::Tensor int8_weight_linear_checked(const at::Tensor& x, const at::Tensor& weight_int8,
                                      const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto x2d = x.contiguous().view({leading_rows(x), x.size(-1)});
  const auto weight = weight_int8.contiguous();
  if (!int8_weight_linear_kernel_applies(x2d, weight)) {
    return int8_weight_linear_reference(x, weight_int8, weight_absmax, bias);
  }
  auto out = at::empty(with_last_dim(x, weight.size(0)), x.options());
  if (out.numel() == 0) return out;
  if (x.size(-1) == 0) return int8_weight_linear_reference(x, weight_int8, weight_absmax, bias);
  const auto weight_scale = weight_absmax.contiguous();
  if (x2d.size(0) > kStreamingKernelMaxRows && int8_weight_linear_sm90_applies(x2d, weight)) {
    auto out2d = out.view({x2d.size(0), weight.size(0)});
    int8_weight_linear_sm90(x2d, weight, weight_scale, epilogue_bias(bias, x.scalar_type()), out2d);
    return out;
  }
  return int8_weight_linear_cuda_kernel(x2d, weight, weight_scale, contiguous_bias(bias), out);
}

at::Tensor int8_weight_linear_cuda(const at::Tensor& x, const at::Tensor& weight_int8,
                                   const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias) {
  check_int8_weight_operands(x, weight_int8, weight_absmax, bias);
  return int8_weight_linear_checked(x, weight_int8, weight_absmax, bias);
}

// forward_rule.h: past kSmallBatchRows, only where the Hopper tensor-core kernel takes x and the
// weight as they are.
bool takes_int8_weight_path(const at::Tensor& x, const at::Tensor& weight_int8) {
  if (is_small_batch(x)) return true;
  const int64_t rows = leading_rows(x);
  return fits_tensor_core_weight_only(rows, weight_int8.size(0), x.size(-1)) && x.is_contiguous() &&
         int8_weight_linear_sm90_applies(x.view({rows, x.size(-1)}), weight_int8);
}

at::Tensor llm_int8_linear_cuda(const at::Tensor& x, const at::Tensor& weight_int8,
                                const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias,
                                double threshold, int64_t capacity, bool exact_decomposition) {
  // Threshold and capacity are checked even where the int8-weight path ignores them: whether it
  // runs depends on the batch, and a bad argument must not pass only with small ones.
  check_int8_linear_arguments(x, weight_int8, weight_absmax, bias, threshold, capacity);
  if (!exact_decomposition && takes_int8_weight_path(x, weight_int8)) {
    return int8_weight_linear_checked(x, weight_int8, weight_absmax, bias);
  }
  return int8_linear_checked(x, weight_int8, weight_absmax, bias, threshold, capacity);
}

}  // namespace

TORCH_LIBRARY_IMPL(llmint8, CUDA, m) {
  m.impl("outlier_split", &outlier_split_cuda);
  m.impl("quantize_rowwise", &quantize_rowwise_cuda);
  m.impl("quantize_colwise", &quantize_colwise_cuda);
  m.impl("int8_matmul", &int8_matmul_cuda);
  m.impl("dequant_outer", &dequant_outer_cuda);
  m.impl("int8_weight_linear", &int8_weight_linear_cuda);
  m.impl("int8_linear", &int8_linear_cuda);
  m.impl("llm_int8_linear", &llm_int8_linear_cuda);
}

}  // namespace llmint8
