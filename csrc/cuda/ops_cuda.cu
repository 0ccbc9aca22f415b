// CUDA kernels for the llmint8 operators (the int8 product itself lives in int8_matmul_cublaslt.cu).
#include <ATen/ATen.h>
#include "../dispatch.h"
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../checks.h"
#include "../core/llmint8_core.h"
#include "../reference.h"
#include "int8_matmul_cublaslt.h"
#include "int8_weight_linear.h"

namespace llmint8 {
namespace {

constexpr int kThreads = 256;
// Rows one block of mark_outlier_columns scans: long enough to amortize the launch, short
// enough that large M still spreads over every SM.
constexpr int kRowsPerOutlierBlock = 64;
constexpr int kBitsPerWord = 32;
// The exclusion bitmask lives in shared memory, whose default per-block limit is 48 KiB.
constexpr size_t kMaxExclusionMaskBytes = 48 * 1024 - 1024;

LLMINT8_HOST_DEVICE int64_t blocks_for(int64_t work, int64_t per_block) { return (work + per_block - 1) / per_block; }

cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

template <typename T>
__global__ void mark_outlier_columns_kernel(const T* __restrict__ x, int64_t rows, int64_t cols,
                                            float threshold, uint8_t* __restrict__ is_outlier) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= cols) return;
  const int64_t first_row = blockIdx.y * int64_t(kRowsPerOutlierBlock);
  const int64_t last_row = min(rows, first_row + kRowsPerOutlierBlock);
  bool found = false;
  for (int64_t r = first_row; r < last_row && !found; ++r) {
    found = is_outlier_value(static_cast<float>(x[r * cols + col]), threshold);
  }
  // Every writer stores the same 1, so concurrent stores from other row blocks are benign.
  if (found) is_outlier[col] = 1;
}

// One block: a running exclusive scan over the column flags, writing ascending indices. A wide
// block keeps the number of sequential tiles (and barriers) small for large K.
constexpr int kCompactThreads = 1024;

__global__ void __launch_bounds__(kCompactThreads)
compact_outlier_columns_kernel(const uint8_t* __restrict__ is_outlier, int64_t cols,
                               int64_t capacity, int32_t* __restrict__ outlier_cols,
                               int32_t* __restrict__ count) {
  using Scan = cub::BlockScan<int32_t, kCompactThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  int32_t seen = 0;
  for (int64_t base = 0; base < cols; base += kCompactThreads) {
    const int64_t col = base + threadIdx.x;
    const int32_t flag = col < cols ? is_outlier[col] : 0;
    int32_t slot, tile_total;
    Scan(scan_storage).ExclusiveSum(flag, slot, tile_total);
    slot += seen;
    if (flag && slot < capacity) outlier_cols[slot] = static_cast<int32_t>(col);
    seen += tile_total;
    __syncthreads();  // scan_storage is reused by the next tile
  }
  for (int64_t slot = seen + threadIdx.x; slot < capacity; slot += kCompactThreads) outlier_cols[slot] = -1;
  if (threadIdx.x == 0) *count = seen;
}

template <typename T>
__global__ void gather_outlier_columns_kernel(const T* __restrict__ x, int64_t rows, int64_t cols,
                                              const int32_t* __restrict__ outlier_cols,
                                              int64_t capacity, T* __restrict__ x_outliers) {
  const int64_t total = rows * capacity;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / capacity;
    const int32_t col = outlier_cols[i % capacity];
    x_outliers[i] = col >= 0 ? x[row * cols + col] : static_cast<T>(0.0f);
  }
}

// Grid-stride launches are capped so huge tensors reuse threads instead of making giant grids.
int64_t grid_stride_blocks(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>(blocks_for(work, kThreads), 65535));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> outlier_split_cuda(const at::Tensor& x,
                                                                  double threshold,
                                                                  int64_t capacity) {
  check_float_input(x, "x");
  check_outlier_arguments(threshold, capacity);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto x_contig = x.contiguous();
  const int64_t rows = leading_rows(x), cols = x.size(-1);
  const auto stream = current_stream(x);

  auto is_outlier = at::zeros({cols}, x.options().dtype(at::kByte));
  auto outlier_cols = at::empty({capacity}, x.options().dtype(at::kInt));
  auto count = at::empty({}, x.options().dtype(at::kInt));
  auto x_outliers = at::empty(with_last_dim(x, capacity), x.options());
  LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "outlier_split", [&] {
    if (rows > 0 && cols > 0) {
      const dim3 grid(blocks_for(cols, kThreads), blocks_for(rows, kRowsPerOutlierBlock));
      mark_outlier_columns_kernel<<<grid, kThreads, 0, stream>>>(
          x_contig.const_data_ptr<scalar_t>(), rows, cols, static_cast<float>(threshold),
          is_outlier.mutable_data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    compact_outlier_columns_kernel<<<1, kCompactThreads, 0, stream>>>(
        is_outlier.const_data_ptr<uint8_t>(), cols, capacity,
        outlier_cols.mutable_data_ptr<int32_t>(), count.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (rows * capacity > 0) {
      gather_outlier_columns_kernel<<<grid_stride_blocks(rows * capacity), kThreads, 0, stream>>>(
          x_contig.const_data_ptr<scalar_t>(), rows, cols, outlier_cols.const_data_ptr<int32_t>(),
          capacity, x_outliers.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {outlier_cols, count, x_outliers};
}

// One block per row: absmax over the columns not excluded, then quantize. Excluded columns
// arrive as an index list (-1 padded; anything outside [0, cols) is ignored, since checking it
// would need a host synchronization) and become a bitmask in shared memory.
template <typename T>
__global__ void quantize_rows_kernel(const T* __restrict__ x, int64_t cols,
                                     const int32_t* __restrict__ excluded_cols,
                                     int64_t excluded_count, int8_t* __restrict__ q,
                                     float* __restrict__ row_absmax) {
  extern __shared__ uint32_t excluded_bits[];
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ float step;

  const int64_t words = excluded_cols ? blocks_for(cols, kBitsPerWord) : 0;
  for (int64_t w = threadIdx.x; w < words; w += kThreads) excluded_bits[w] = 0;
  __syncthreads();
  for (int64_t slot = threadIdx.x; slot < excluded_count; slot += kThreads) {
    const int32_t col = excluded_cols[slot];
    if (col >= 0 && col < cols) atomicOr(&excluded_bits[col / kBitsPerWord], 1u << (col % kBitsPerWord));
  }
  __syncthreads();
  auto excluded = [&](int64_t col) {
    return words > 0 && (excluded_bits[col / kBitsPerWord] >> (col % kBitsPerWord)) & 1u;
  };

  const T* row = x + blockIdx.x * cols;
  float absmax = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    if (!excluded(c)) absmax = fmaxf(absmax, fabsf(static_cast<float>(row[c])));
  }
  absmax = Reduce(reduce_storage).Reduce(absmax, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) {
    row_absmax[blockIdx.x] = absmax;
    step = inverse_step(absmax);
  }
  __syncthreads();
  int8_t* q_row = q + blockIdx.x * cols;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    q_row[c] = excluded(c) ? int8_t{0} : quantize_value(static_cast<float>(row[c]), step);
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cuda(const at::Tensor& x,
                                                      const std::optional<at::Tensor>& outlier_cols) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto x_contig = x.contiguous();
  const int64_t rows = leading_rows(x), cols = x.size(-1);
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto absmax = at::empty(without_last_dim(x), x.options().dtype(at::kFloat));
  if (rows == 0) return {q, absmax};
  const auto cols_contig = outlier_cols.has_value() ? outlier_cols->contiguous() : at::Tensor();
  const int32_t* excluded = cols_contig.defined() ? cols_contig.const_data_ptr<int32_t>() : nullptr;
  const int64_t excluded_count = cols_contig.defined() ? cols_contig.numel() : 0;
  const size_t shared_bytes = excluded ? blocks_for(cols, kBitsPerWord) * sizeof(uint32_t) : 0;
  TORCH_CHECK(shared_bytes <= kMaxExclusionMaskBytes, "x's last dimension (", cols,
              ") is too large for outlier_cols on CUDA: at most ", kMaxExclusionMaskBytes * 8,
              " columns");
  LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "quantize_rows", [&] {
    quantize_rows_kernel<<<rows, kThreads, shared_bytes, current_stream(x)>>>(
        x_contig.const_data_ptr<scalar_t>(), cols, excluded, excluded_count,
        q.mutable_data_ptr<int8_t>(), absmax.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
                                     const float* __restrict__ col_absmax,
                                     const float* __restrict__ bias, T* __restrict__ out) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % cols;
    const float value = dequantize_value(acc[i], row_absmax[i / cols], col_absmax[col],
                                         bias ? bias[col] : 0.0f);
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
  const auto bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  LLMINT8_DISPATCH_FLOAT_TYPES(out_dtype, "dequant_outer", [&] {
    dequant_outer_kernel<<<grid_stride_blocks(rows * cols), kThreads, 0, current_stream(acc)>>>(
        acc_c.const_data_ptr<int32_t>(), rows, cols, row_c.const_data_ptr<float>(),
        col_c.const_data_ptr<float>(), bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// w_cols_t [capacity, N] fp32: the weight columns named by outlier_cols, dequantized (zero for
// padded slots), transposed so the epilogue reads them coalesced along N.
__global__ void gather_weight_columns_kernel(const int8_t* __restrict__ w, int64_t n_dim,
                                             int64_t k_dim, const float* __restrict__ w_absmax,
                                             const int32_t* __restrict__ outlier_cols,
                                             int64_t capacity, float* __restrict__ w_cols_t) {
  const int64_t total = capacity * n_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t slot = i / n_dim, n = i % n_dim;
    const int32_t col = outlier_cols[slot];
    w_cols_t[i] = col >= 0 ? static_cast<float>(w[n * k_dim + col]) * (w_absmax[n] / kInt8Max) : 0.0f;
  }
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
                                             const float* __restrict__ col_absmax,
                                             const float* __restrict__ bias,
                                             const T* __restrict__ x_outliers,
                                             const float* __restrict__ w_cols_t,
                                             const int32_t* __restrict__ count, int64_t capacity,
                                             T* __restrict__ out) {
  __shared__ float x_tile[kEpilogueRows][kSlotsPerPass];
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const bool active = n < n_dim;  // no early return: every thread takes part in the barriers
  const int64_t used = x_outliers ? min(int64_t(*count), capacity) : 0;
  const float column_scale = active ? col_absmax[n] : 0.0f;
  const float column_bias = active && bias ? bias[n] : 0.0f;
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
        weight[j] = active && first + j < used ? w_cols_t[(first + j) * n_dim + n] : 0.0f;
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

at::Tensor int8_linear_cuda(const at::Tensor& x, const at::Tensor& weight_int8,
                            const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias,
                            double threshold, int64_t capacity) {
  check_int8_weight_operands(x, weight_int8, weight_absmax, bias);
  check_outlier_arguments(threshold, capacity);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = leading_rows(x), n_dim = weight_int8.size(0), k_dim = weight_int8.size(1);
  auto out = at::empty(with_last_dim(x, n_dim), x.options());
  if (out.numel() == 0) return out;
  const bool split = threshold > 0.0 && capacity > 0;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> outliers;
  if (split) outliers = outlier_split_cuda(x, threshold, capacity);
  const at::Tensor& outlier_cols = std::get<0>(outliers);
  const at::Tensor& count = std::get<1>(outliers);
  const at::Tensor& x_outliers = std::get<2>(outliers);
  const auto quantized =
      quantize_rows_cuda(x, split ? std::optional<at::Tensor>(outlier_cols) : std::nullopt);
  const at::Tensor& x_int8 = std::get<0>(quantized);
  const at::Tensor& x_absmax = std::get<1>(quantized);
  const auto acc = int8_matmul_cuda(x_int8, weight_int8);
  const auto weight = weight_int8.contiguous();
  const auto weight_scale = weight_absmax.contiguous();
  const auto stream = current_stream(x);
  at::Tensor w_cols_t;
  if (split) {
    w_cols_t = at::empty({capacity, n_dim}, x.options().dtype(at::kFloat));
    gather_weight_columns_kernel<<<grid_stride_blocks(capacity * n_dim), kThreads, 0, stream>>>(
        weight.const_data_ptr<int8_t>(), n_dim, k_dim, weight_scale.const_data_ptr<float>(),
        outlier_cols.const_data_ptr<int32_t>(), capacity, w_cols_t.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto bias_f32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const dim3 grid(blocks_for(n_dim, kThreads), std::min<int64_t>(blocks_for(rows, kEpilogueRows), 65535));
  LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "int8_linear", [&] {
    dequant_with_outliers_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        acc.const_data_ptr<int32_t>(), rows, n_dim, x_absmax.const_data_ptr<float>(),
        weight_scale.const_data_ptr<float>(),
        bias_f32.defined() ? bias_f32.const_data_ptr<float>() : nullptr,
        split ? x_outliers.const_data_ptr<scalar_t>() : nullptr,
        split ? w_cols_t.const_data_ptr<float>() : nullptr,
        split ? count.const_data_ptr<int32_t>() : nullptr, capacity,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor int8_weight_linear_cuda(const at::Tensor& x, const at::Tensor& weight_int8,
                                   const at::Tensor& weight_absmax,
                                   const std::optional<at::Tensor>& bias) {
  check_int8_weight_operands(x, weight_int8, weight_absmax, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto x2d = x.contiguous().view({leading_rows(x), x.size(-1)});
  const auto weight = weight_int8.contiguous();
  if (!int8_weight_linear_kernel_applies(x2d, weight)) {
    return int8_weight_linear_reference(x, weight_int8, weight_absmax, bias);
  }
  auto out = at::empty(with_last_dim(x, weight.size(0)), x.options());
  if (out.numel() == 0) return out;
  if (x.size(-1) == 0) return int8_weight_linear_reference(x, weight_int8, weight_absmax, bias);
  const auto bias_f32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  return int8_weight_linear_cuda_kernel(x2d, weight, weight_absmax.contiguous(), bias_f32, out);
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
}

}  // namespace llmint8
