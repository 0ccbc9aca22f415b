// Small-batch fast path: 16-bit activations times the int8 weight on tensor cores, read once.
//
// At M <= 16 a linear layer is bound by reading its weight; int8 halves those bytes. Instead of
// quantizing the few activation rows (which costs launches and accuracy), each int8 weight value
// is widened to 16 bits in registers (exact: |v| <= 127) and fed to mma.sync m16n8k16 with fp32
// accumulation; the per-channel scale and bias are applied once per output.
#include "int8_weight_linear.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../checks.h"
#include "../core/llmint8_core.h"

namespace llmint8 {
namespace {

constexpr int kWarpSize = 32;
constexpr int kTileRows = 16;          // M rows per mma tile
constexpr int kTileCols = 8;           // N rows of W per mma tile
constexpr int kTilesPerWarp = 4;       // N = 32 weight rows per warp: x fragments are reused 4x
constexpr int kWarpsPerBlock = 4;      // all on the same weight rows, each on its own K slice
constexpr int kLaneGroups = 2;         // runs of 16 k per lane and step
constexpr int kLaneBytes = 16 * kLaneGroups;
constexpr int kChunk = 4 * kLaneBytes; // K elements per warp step: 4 lanes x kLaneBytes per row
constexpr int kBlockCols = kTileCols * kTilesPerWarp;

// Two int8 (the low or high pair of a 32-bit word) widened to a pair of 16-bit values.
template <typename T> struct Widen;

template <> struct Widen<at::Half> {
  using Pair = __half2;
  // 0x64 in the high byte makes the half 1024 + byte; biasing the int8 by 128 and subtracting
  // 1152 recovers it exactly, with two byte permutes and one subtraction for two values.
  static __device__ __forceinline__ uint32_t pair(uint32_t packed, bool high) {
    const uint32_t biased = packed ^ 0x80808080u;
    const uint32_t halves = __byte_perm(biased, 0x64646464u, high ? 0x4342 : 0x4140);
    __half2 value = *reinterpret_cast<const __half2*>(&halves);
    value = __hsub2(value, __half2half2(__ushort_as_half(0x6480)));  // 1152.0
    return *reinterpret_cast<uint32_t*>(&value);
  }
};

template <> struct Widen<at::BFloat16> {
  // bf16's 8-bit mantissa cannot hold the biased byte; go through exact fp32 instead.
  static __device__ __forceinline__ uint32_t pair(uint32_t packed, bool high) {
    const int shift = high ? 16 : 0;
    const float first = static_cast<float>(static_cast<int8_t>((packed >> shift) & 0xff));
    const float second = static_cast<float>(static_cast<int8_t>((packed >> (shift + 8)) & 0xff));
    __nv_bfloat162 value = __floats2bfloat162_rn(first, second);
    return *reinterpret_cast<uint32_t*>(&value);
  }
};

template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  if constexpr (std::is_same_v<T, at::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 16 consecutive 16-bit activations of one row (zeros for rows past M).
__device__ __forceinline__ void load_activations(const void* row, bool valid, uint4 (&out)[2]) {
  if (valid) {
    const uint4* source = reinterpret_cast<const uint4*>(row);
    out[0] = __ldg(source);
    out[1] = __ldg(source + 1);
  } else {
    out[0] = out[1] = make_uint4(0, 0, 0, 0);
  }
}

__device__ __forceinline__ uint32_t word(const uint4 (&v)[2], int i) {
  const uint32_t words[8] = {v[0].x, v[0].y, v[0].z, v[0].w, v[1].x, v[1].y, v[1].z, v[1].w};
  return words[i];
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

using WeightFragments = uint4[kTilesPerWarp][kLaneGroups];

// The mma sums over its 16 k values in any order, so each lane may own *contiguous* k as long
// as A and B use the same assignment. Lane (group g, thread t) owns kLaneGroups runs of 16
// contiguous k at t*kLaneBytes + c*16: a warp reads 4 x kLaneBytes contiguous bytes of each of
// its weight rows per step (long DRAM bursts), and in mma step s of run c the lane supplies
// physical k = ... + s*4 + {0,1} as logical k = t*2 + {0,1} and + s*4 + {2,3} as 8 + t*2 + {0,1}.
__device__ __forceinline__ void load_weights(const int8_t* __restrict__ w_rows, int64_t n_rows_left,
                                             int64_t k_dim, int64_t k, WeightFragments& w) {
  const int lane = threadIdx.x % kWarpSize, group = lane / 4, thread = lane % 4;
  const int64_t k_lane = k + thread * kLaneBytes;
#pragma unroll
  for (int tile = 0; tile < kTilesPerWarp; ++tile) {
    const int64_t n = tile * kTileCols + group;
#pragma unroll
    for (int c = 0; c < kLaneGroups; ++c) {
      // K % 16 == 0, so each run of 16 lies wholly inside or wholly past the end of K.
      const bool valid = n < n_rows_left && k_lane + c * 16 < k_dim;
      w[tile][c] = valid ? __ldg(reinterpret_cast<const uint4*>(w_rows + n * k_dim + k_lane) + c)
                         : make_uint4(0, 0, 0, 0);
    }
  }
}

template <typename T>
__device__ __forceinline__ void multiply_step(const T* __restrict__ x, int64_t m_base,
                                              int64_t rows, int64_t k_dim, int64_t k,
                                              const WeightFragments& w,
                                              float (&acc)[kTilesPerWarp][4]) {
  const int lane = threadIdx.x % kWarpSize, group = lane / 4, thread = lane % 4;
#pragma unroll
  for (int c = 0; c < kLaneGroups; ++c) {
    const int64_t k_run = k + thread * kLaneBytes + c * 16;
    uint4 x_low[2], x_high[2];
    load_activations(x + (m_base + group) * k_dim + k_run, k_run < k_dim && m_base + group < rows, x_low);
    load_activations(x + (m_base + group + 8) * k_dim + k_run, k_run < k_dim && m_base + group + 8 < rows,
                     x_high);
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      const uint32_t a[4] = {word(x_low, 2 * step), word(x_high, 2 * step),
                             word(x_low, 2 * step + 1), word(x_high, 2 * step + 1)};
#pragma unroll
      for (int tile = 0; tile < kTilesPerWarp; ++tile) {
        const uint32_t packed = word(w[tile][c], step);
        mma_16x8x16<T>(acc[tile], a, Widen<T>::pair(packed, false), Widen<T>::pair(packed, true));
      }
    }
  }
}

// Block (n_block, k_split, m_tile): its warps share kBlockCols weight rows and split the block's K range;
// their partial sums meet in shared memory. With one K split the block applies scale and bias and
// writes the output; with several, it writes fp32 partials that a second kernel adds in a fixed
// order (deterministic, unlike float atomics).
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarpSize)
int8_weight_linear_kernel(const T* __restrict__ x, int64_t rows, int64_t k_dim,
                          const int8_t* __restrict__ w, const float* __restrict__ w_absmax,
                          const float* __restrict__ bias, int64_t n_dim, int64_t k_per_split,
                          T* __restrict__ out, float* __restrict__ partials) {
  __shared__ float reduced[kWarpsPerBlock][kTileRows][kBlockCols];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t n_base = blockIdx.x * int64_t(kBlockCols);
  const int64_t m_base = blockIdx.z * int64_t(kTileRows);
  const int64_t k_begin = blockIdx.y * k_per_split;
  const int64_t k_end = min(k_dim, k_begin + k_per_split);

  float acc[kTilesPerWarp][4] = {};
  const int8_t* w_rows = w + n_base * k_dim;
  const int64_t stride = kWarpsPerBlock * kChunk;
  // Double buffering: the next step's weights are in flight while this step multiplies, so each
  // warp keeps memory busy instead of alternating between waiting and computing.
  WeightFragments current, next;
  int64_t k = k_begin + warp * kChunk;
  if (k < k_end) load_weights(w_rows, n_dim - n_base, k_dim, k, current);
  for (; k < k_end; k += stride) {
    if (k + stride < k_end) load_weights(w_rows, n_dim - n_base, k_dim, k + stride, next);
    multiply_step(x, m_base, rows, k_dim, k, current, acc);
#pragma unroll
    for (int tile = 0; tile < kTilesPerWarp; ++tile) {
#pragma unroll
      for (int c = 0; c < kLaneGroups; ++c) current[tile][c] = next[tile][c];
    }
  }
  const int group = lane / 4, thread = lane % 4;
#pragma unroll
  for (int tile = 0; tile < kTilesPerWarp; ++tile) {
    const int col = tile * kTileCols + thread * 2;
    reduced[warp][group][col] = acc[tile][0];
    reduced[warp][group][col + 1] = acc[tile][1];
    reduced[warp][group + 8][col] = acc[tile][2];
    reduced[warp][group + 8][col + 1] = acc[tile][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTileRows * kBlockCols; i += blockDim.x) {
    const int row = i / kBlockCols, col = i % kBlockCols;
    const int64_t m = m_base + row, n = n_base + col;
    if (m >= rows || n >= n_dim) continue;
    float sum = 0.0f;
#pragma unroll
    for (int p = 0; p < kWarpsPerBlock; ++p) sum += reduced[p][row][col];
    if (partials) {
      partials[(blockIdx.y * rows + m) * n_dim + n] = sum;
    } else {
      out[m * n_dim + n] = static_cast<T>(sum * (w_absmax[n] / kInt8Max) + (bias ? bias[n] : 0.0f));
    }
  }
}

template <typename T>
__global__ void finish_split_k_kernel(const float* __restrict__ partials, int64_t splits,
                                      int64_t rows, int64_t n_dim,
                                      const float* __restrict__ w_absmax,
                                      const float* __restrict__ bias, T* __restrict__ out) {
  const int64_t total = rows * n_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i % n_dim;
    float sum = 0.0f;
    for (int64_t s = 0; s < splits; ++s) sum += partials[s * total + i];
    out[i] = static_cast<T>(sum * (w_absmax[n] / kInt8Max) + (bias ? bias[n] : 0.0f));
  }
}

int multiprocessor_count(c10::DeviceIndex device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Enough K splits that the grid covers every SM twice, but each split keeps whole warp steps.
int64_t choose_k_splits(int64_t n_blocks, int64_t m_tiles, int64_t k_dim, int sms) {
  const int64_t wanted = (2 * int64_t(sms) + n_blocks * m_tiles - 1) / (n_blocks * m_tiles);
  const int64_t most = std::max<int64_t>(1, k_dim / (kWarpsPerBlock * kChunk));
  return std::clamp<int64_t>(wanted, 1, most);
}

}  // namespace

bool int8_weight_linear_kernel_applies(const at::Tensor& x, const at::Tensor& weight_int8) {
  // 16-byte vector loads of whole 16-element groups need K % 16 == 0 and aligned rows.
  const int64_t k = weight_int8.size(1);
  return (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) && k % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(weight_int8.const_data_ptr()) % 16 == 0;
}

at::Tensor int8_weight_linear_cuda_kernel(const at::Tensor& x2d, const at::Tensor& weight_int8,
                                          const at::Tensor& weight_absmax,
                                          const at::Tensor& bias_f32, at::Tensor out) {
  const int64_t rows = x2d.size(0), k_dim = x2d.size(1), n_dim = weight_int8.size(0);
  const int64_t n_blocks = (n_dim + kBlockCols - 1) / kBlockCols;
  const int64_t m_tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t splits = choose_k_splits(n_blocks, m_tiles, k_dim, multiprocessor_count(x2d.device().index()));
  // Split boundaries fall on whole 64-wide chunks so no chunk straddles two splits.
  const int64_t k_per_split = (k_dim / splits + kChunk - 1) / kChunk * kChunk;
  const dim3 grid(n_blocks, (k_dim + k_per_split - 1) / k_per_split, m_tiles);
  const auto stream = c10::cuda::getCurrentCUDAStream(x2d.device().index()).stream();
  at::Tensor partials;
  if (grid.y > 1) partials = at::empty({int64_t(grid.y), rows, n_dim}, x2d.options().dtype(at::kFloat));
  const float* bias = bias_f32.defined() ? bias_f32.const_data_ptr<float>() : nullptr;

  auto launch = [&](auto tag) {
    using T = decltype(tag);
    int8_weight_linear_kernel<T><<<grid, kWarpsPerBlock * kWarpSize, 0, stream>>>(
        x2d.const_data_ptr<T>(), rows, k_dim, weight_int8.const_data_ptr<int8_t>(),
        weight_absmax.const_data_ptr<float>(), bias, n_dim, k_per_split, out.mutable_data_ptr<T>(),
        partials.defined() ? partials.mutable_data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (partials.defined()) {
      const int64_t blocks = std::min<int64_t>((rows * n_dim + 255) / 256, 65535);
      finish_split_k_kernel<T><<<blocks, 256, 0, stream>>>(
          partials.const_data_ptr<float>(), grid.y, rows, n_dim,
          weight_absmax.const_data_ptr<float>(), bias, out.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  };
  if (x2d.scalar_type() == at::kHalf) {
    launch(at::Half{});
  } else {
    launch(at::BFloat16{});
  }
  return out;
}

}  // namespace llmint8
