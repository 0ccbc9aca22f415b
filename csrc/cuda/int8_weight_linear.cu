// Small-batch fast path: 16-bit activations times the int8 weight on tensor cores, read once.
//
// At M <= 16 a linear layer is bound by reading its weight; int8 halves those bytes. Instead of
// quantizing the few activation rows (which costs launches and accuracy), each int8 weight value
// is widened to 16 bits in registers (exact: |v| <= 127) and fed to mma.sync m16n8k16 with fp32
// accumulation; the per-channel scale and bias are applied once per output.
//
// Each block owns 32 weight rows and one 16-row M tile; its warps split K between them, loading
// their weights straight into registers one warp step ahead. Two configurations differ only in
// warps per block and K-split rule (V3, Warps16 below); use_warps16 picks one per problem.
#include "int8_weight_linear.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "../core/llmint8_core.h"
#include "bias_vector.cuh"
#include "grid_dependency.cuh"
#include "occupancy.h"

namespace llmint8 {
namespace {

constexpr int kWarpSize = 32;
constexpr int kTileRows = 16;  // M rows per mma tile
constexpr int kTileCols = 8;   // N rows of W per mma tile
constexpr int kRunBytes = 16;  // one lane's 16 contiguous k of one weight row: one 16-byte load
constexpr int kTiles = 4;      // mma tiles per warp on N: every warp of a block shares its 32 rows
constexpr int kBlockCols = kTiles * kTileCols;
constexpr int kLaneRuns = 2;   // runs of 16 k per lane and weight row in one warp step
constexpr int kLaneBytes = kLaneRuns * kRunBytes;
constexpr int kStepK = 4 * kLaneBytes;  // a warp step reads 128 contiguous bytes of each row
constexpr int kStages = 2;     // warp steps of weights in registers: one in flight while one multiplies

// How a configuration splits K across blocks (more splits: more blocks, but fp32 partials and a
// second launch).
enum class SplitRule {
  kTwoPerSm,   // the fewest splits that give every SM at least two blocks (k_per_split_at_least)
  kFillSlots,  // the cheapest estimate for the resident block slots (k_per_split_filling_slots)
};

// Blocks of Warps warps, which take turns on the block's 32 rows a warp step at a time (warp w
// reads k = w * kStepK + i * Warps * kStepK), and K split across blocks by Rule.
template <int Warps, SplitRule Rule>
struct Config {
  static_assert(16 % Warps == 0, "whole blocks make 16 resident warps per SM");
  static constexpr int kWarps = Warps, kThreads = Warps * kWarpSize;
  static constexpr SplitRule kRule = Rule;
  // Asking for 16 resident warps per SM caps registers at 128 per thread.
  static constexpr int kMinBlocks = 16 / Warps;
  // Split boundaries fall on whole warp steps, and every split gives each warp at least one step.
  static constexpr int kMinSplitK = Warps * kStepK;
};

// The default: 4 warps per block, several blocks per SM, K split until every SM has two blocks.
using V3 = Config<4, SplitRule::kTwoPerSm>;
// 16 warps on the same 32 rows, for grids of at most one block per SM (a 16-warp block at 128
// registers per thread fills an SM's register file). Each SM then streams 16 warps' loads with
// no K split, where V3 must split K 2-3 ways to give SMs two or three 4-warp blocks (8-12 warps)
// and pays fp32 partials and a second launch: 14336->4096 (128 blocks on 132 SMs) 43.1 -> 39.7 us,
// 1024->4096 15.7 -> 13.5 us on an H100 (benchmarks/results/sweep_small_m_h100.json).
using Warps16 = Config<16, SplitRule::kFillSlots>;

template <typename T>
struct Problem {
  const T* x;
  int64_t rows, k_dim, n_dim;
  const int8_t* w;
  const float* w_absmax;
  BiasVector bias;
  int64_t k_per_split;
  int64_t m_tiles;
  T* out;
  float* partials;  // [splits, rows, n_dim] when K is split, else null
};

// Two int8 (the low or high pair of a 32-bit word) widened to a pair of 16-bit values.
template <typename T> struct Widen;

template <> struct Widen<at::Half> {
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
  // bf16's 7-bit mantissa cannot hold the biased byte, fp32's can: 0x4B000000 + byte is the float
  // 2^23 + byte, so one FADD of -(2^23 + 128) gives the exact integer, whose upper half is its
  // bf16 (|v| <= 128 needs 8 significant bits). Byte permutes and FADDs, no I2F conversions.
  static __device__ __forceinline__ uint32_t pair(uint32_t packed, bool high) {
    const uint32_t biased = packed ^ 0x80808080u;
    const float first = __uint_as_float(__byte_perm(biased, 0x4B000000u, high ? 0x7652 : 0x7650)) - 8388736.0f;
    const float second = __uint_as_float(__byte_perm(biased, 0x4B000000u, high ? 0x7653 : 0x7651)) - 8388736.0f;
    return __byte_perm(__float_as_uint(first), __float_as_uint(second), 0x7632);
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

__device__ __forceinline__ int lane_group() { return threadIdx.x % kWarpSize / 4; }
__device__ __forceinline__ int lane_thread() { return threadIdx.x % 4; }

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

using Fragments = uint4[kTiles][kLaneRuns];

// One warp step of weights, straight from global memory; rows past N and runs past K read as zeros.
// Streaming loads (ld.global.cs, evict-first in L1 and L2): each weight byte is read once per
// call, so its lines are the ones L2 should give up first, not the activations, the KV cache or
// dirty lines of earlier kernels, whose eviction would cost a write-back inside this kernel.
// The mma sums over its 16 k values in any order, so each lane may own *contiguous* k as long
// as A and B use the same assignment. Lane (group g, thread t) owns kLaneRuns runs of 16
// contiguous k at t*kLaneBytes + c*16 of weight row tile*8 + g: a warp reads kStepK contiguous
// bytes of each of its rows per step (long DRAM bursts), and in mma step s of run c the lane
// supplies physical k = ... + s*4 + {0,1} as logical k = t*2 + {0,1} and + s*4 + {2,3} as
// 8 + t*2 + {0,1}.
__device__ __forceinline__ void load_weights(const int8_t* w_rows, int64_t n_rows_left,
                                             int64_t k_dim, int64_t k, Fragments& w) {
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
    for (int c = 0; c < kLaneRuns; ++c) {
      const int row = tile * kTileCols + lane_group();
      const int k_offset = lane_thread() * kLaneBytes + c * kRunBytes;
      // K % 16 == 0, so each run of 16 lies wholly inside or wholly past the end of K.
      const bool valid = row < n_rows_left && k + k_offset < k_dim;
      w[tile][c] = valid ? __ldcs(reinterpret_cast<const uint4*>(w_rows + row * k_dim + k + k_offset))
                         : make_uint4(0, 0, 0, 0);
    }
  }
}

template <typename T>
__device__ __forceinline__ void multiply_step(const Problem<T>& p, int64_t m_base, int64_t k,
                                              const Fragments& w, float (&acc)[kTiles][4]) {
  const int group = lane_group();
#pragma unroll
  for (int c = 0; c < kLaneRuns; ++c) {
    const int64_t k_run = k + lane_thread() * kLaneBytes + c * kRunBytes;
    uint4 x_low[2], x_high[2];
    load_activations(p.x + (m_base + group) * p.k_dim + k_run,
                     k_run < p.k_dim && m_base + group < p.rows, x_low);
    load_activations(p.x + (m_base + group + 8) * p.k_dim + k_run,
                     k_run < p.k_dim && m_base + group + 8 < p.rows, x_high);
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      const uint32_t a[4] = {word(x_low, 2 * step), word(x_high, 2 * step),
                             word(x_low, 2 * step + 1), word(x_high, 2 * step + 1)};
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile) {
        const uint32_t packed = word(w[tile][c], step);
        mma_16x8x16<T>(acc[tile], a, Widen<T>::pair(packed, false), Widen<T>::pair(packed, true));
      }
    }
  }
}

// The scale and bias of the one output column a thread writes in store_block (its threads step
// by a multiple of kBlockCols). Read before the main loop, they arrive with the weights; read in
// store_block, they cost every block one more memory round trip after its last multiply.
struct ColumnEpilogue {
  float scale = 0.0f, bias = 0.0f;
};

template <typename T>
__device__ __forceinline__ ColumnEpilogue column_epilogue(const Problem<T>& p, int64_t n_base) {
  const int64_t n = n_base + threadIdx.x % kBlockCols;
  if (p.partials || n >= p.n_dim) return {};  // split K: finish_split_k_kernel applies them
  return {p.w_absmax[n] / kInt8Max, p.bias[n]};
}

// The block's warps (one per K slice) add their sums in shared memory, reduced[warp][row][col],
// in a fixed order. With one K split the block applies scale and bias and writes the output; with
// several, it writes fp32 partials that finish_split_k_kernel adds in a fixed order
// (deterministic, unlike float atomics).
template <typename C, typename T>
__device__ __forceinline__ void store_block(const Problem<T>& p, int64_t n_base, int64_t m_base,
                                            const float (&acc)[kTiles][4], ColumnEpilogue column,
                                            float* reduced) {
  static_assert(C::kThreads % kBlockCols == 0, "a thread writes one output column");
  const int group = lane_group();
  float* mine = reduced + threadIdx.x / kWarpSize * kTileRows * kBlockCols;
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile) {
    const int col = tile * kTileCols + lane_thread() * 2;
    mine[group * kBlockCols + col] = acc[tile][0];
    mine[group * kBlockCols + col + 1] = acc[tile][1];
    mine[(group + 8) * kBlockCols + col] = acc[tile][2];
    mine[(group + 8) * kBlockCols + col + 1] = acc[tile][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTileRows * kBlockCols; i += C::kThreads) {
    const int64_t m = m_base + i / kBlockCols, n = n_base + i % kBlockCols;
    if (m >= p.rows || n >= p.n_dim) continue;
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < C::kWarps; ++s) sum += reduced[s * kTileRows * kBlockCols + i];
    if (p.partials) {
      p.partials[(blockIdx.y * p.rows + m) * p.n_dim + n] = sum;
    } else {
      p.out[m * p.n_dim + n] = static_cast<T>(sum * column.scale + column.bias);
    }
  }
}

// Block (n block * m_tiles + M tile, K split) of the grid: the M tiles of one n block are
// neighbours, so their shared weight rows come from L2 after the first reads them. Each warp walks its K slice one step at a time
// with the next kStages - 1 steps of weights already requested, so memory stays busy while it
// multiplies. The loop is unrolled by kStages so that every ring index is a compile-time register
// name.
template <typename C, typename T>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
int8_weight_linear_kernel(const Problem<T> p) {
  let_next_grid_launch();
  __shared__ float reduced[C::kWarps * kTileRows * kBlockCols];
  const int64_t k_begin = blockIdx.y * p.k_per_split;
  const int64_t n_base = blockIdx.x / p.m_tiles * int64_t(kBlockCols);
  const int64_t m_base = blockIdx.x % p.m_tiles * int64_t(kTileRows);
  const int64_t k_end = min(p.k_dim, k_begin + p.k_per_split);
  const int8_t* w_rows = p.w + n_base * p.k_dim;
  const int64_t n_rows_left = p.n_dim - n_base;
  constexpr int64_t kStride = C::kWarps * kStepK;
  const int64_t k_first = k_begin + threadIdx.x / kWarpSize * kStepK;

  float acc[kTiles][4] = {};
  Fragments ring[kStages];
#pragma unroll
  for (int s = 0; s + 1 < kStages; ++s) {
    const int64_t k = k_first + s * kStride;
    if (k < k_end) load_weights(w_rows, n_rows_left, p.k_dim, k, ring[s]);
  }
  // The weight depends on no earlier kernel, so its first stages load in the previous kernel's
  // tail; x is read only after the wait.
  wait_for_previous_grid();
  const ColumnEpilogue column = column_epilogue(p, n_base);
  for (int64_t k_turn = k_first; k_turn < k_end; k_turn += kStages * kStride) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const int64_t k = k_turn + s * kStride, k_ahead = k + (kStages - 1) * kStride;
      if (k_ahead < k_end) {
        load_weights(w_rows, n_rows_left, p.k_dim, k_ahead, ring[(s + kStages - 1) % kStages]);
      }
      if (k < k_end) multiply_step(p, m_base, k, ring[s], acc);
    }
  }
  store_block<C>(p, n_base, m_base, acc, column, reduced);
}

template <typename T>
__global__ void finish_split_k_kernel(const float* __restrict__ partials, int64_t splits,
                                      int64_t rows, int64_t n_dim,
                                      const float* __restrict__ w_absmax, BiasVector bias,
                                      T* __restrict__ out) {
  const int64_t total = rows * n_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i % n_dim;
    float sum = 0.0f;
    for (int64_t s = 0; s < splits; ++s) sum += partials[s * total + i];
    out[i] = static_cast<T>(sum * (w_absmax[n] / kInt8Max) + bias[n]);
  }
}

struct Shape {
  int64_t rows, n_dim, k_dim;
  int sms;
  // Blocks of one K split: 32-row column blocks times 16-row M tiles.
  int64_t tiles() const {
    return blocks_for(n_dim, kBlockCols) * blocks_for(rows, kTileRows);
  }
};

// K / splits rounded up to whole warp steps.
int64_t k_per_split(int64_t k_dim, int64_t splits) {
  return blocks_for(k_dim / splits, kStepK) * kStepK;
}

template <typename C>
int64_t most_splits(int64_t k_dim) {
  return std::max<int64_t>(1, k_dim / C::kMinSplitK);
}

// SplitRule::kTwoPerSm.
template <typename C>
int64_t k_per_split_at_least(const Shape& s) {
  const int64_t tiles = s.tiles();
  const int64_t wanted = blocks_for(2 * int64_t(s.sms), tiles);
  return k_per_split(s.k_dim, std::clamp<int64_t>(wanted, 1, most_splits<C>(s.k_dim)));
}

// SplitRule::kFillSlots: the K split with the least estimated time, in bytes at full-machine
// bandwidth: each wave costs as if all `slots` blocks ran (a partial last wave idles the rest, and
// a weight-streaming kernel's bandwidth scales with the loads in flight) plus its ramp-up and
// drain; a split K adds the fp32 partials written and read back and the finishing launch. ~1.5 us,
// about 4 MiB of bandwidth, is the guess for each of the fixed costs.
template <typename C>
int64_t k_per_split_filling_slots(const Shape& s, int64_t slots) {
  constexpr int64_t kLatencyBytes = 4 << 20;
  const int64_t tiles = s.tiles();
  int64_t best = s.k_dim, best_cost = std::numeric_limits<int64_t>::max();
  for (int64_t splits = 1; splits <= most_splits<C>(s.k_dim); ++splits) {
    const int64_t per_split = k_per_split(s.k_dim, splits);
    const int64_t used = blocks_for(s.k_dim, per_split);
    const int64_t waves = blocks_for(tiles * used, slots);
    int64_t cost = waves * (slots * kBlockCols * per_split + kLatencyBytes);
    if (used > 1) cost += used * s.rows * s.n_dim * 8 + kLatencyBytes;
    if (cost < best_cost) {
      best = per_split;
      best_cost = cost;
    }
  }
  return best;
}

// kernel<<<grid, threads, 0, stream>>>(p), allowed to start during the previous grid's tail where
// `overlap` (the kernel waits for that grid before reading x; see wait_for_previous_grid).
template <typename T>
void launch_overlapping_previous(void (*kernel)(Problem<T>), dim3 grid, int threads, cudaStream_t stream,
                                 const Problem<T>& p, bool overlap) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.stream = stream;
  cudaLaunchAttribute overlap_attribute = overlapping_previous_grid();
  config.attrs = &overlap_attribute;
  config.numAttrs = overlap ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
}

template <typename C, typename T>
void launch(Problem<T> p, const Shape& shape, const at::TensorOptions& options, cudaStream_t stream) {
  constexpr auto kernel = &int8_weight_linear_kernel<C, T>;
  if constexpr (C::kRule == SplitRule::kTwoPerSm) {
    p.k_per_split = k_per_split_at_least<C>(shape);
  } else {
    const int64_t slots = resident_blocks(reinterpret_cast<const void*>(kernel), C::kThreads);
    p.k_per_split = k_per_split_filling_slots<C>(shape, slots);
  }
  p.m_tiles = blocks_for(p.rows, kTileRows);
  const dim3 grid(blocks_for(p.n_dim, kBlockCols) * p.m_tiles, blocks_for(p.k_dim, p.k_per_split));
  at::Tensor partials;
  if (grid.y > 1) partials = at::empty({int64_t(grid.y), p.rows, p.n_dim}, options.dtype(at::kFloat));
  p.partials = partials.defined() ? partials.mutable_data_ptr<float>() : nullptr;
  // Only code built for 9.0 or later holds the wait: a kernel JIT-compiled from older PTX (an
  // 8.0+PTX build on a Hopper GPU) must not start early.
  const bool overlap = kernel_ptx_version(reinterpret_cast<const void*>(kernel)) >= 90;
  launch_overlapping_previous(kernel, grid, C::kThreads, stream, p, overlap);
  if (partials.defined()) {
    const int64_t blocks = std::min<int64_t>((p.rows * p.n_dim + 255) / 256, 65535);
    finish_split_k_kernel<T><<<blocks, 256, 0, stream>>>(p.partials, grid.y, p.rows, p.n_dim,
                                                         p.w_absmax, p.bias, p.out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Warps16 when every block of the unsplit grid gets an SM to itself (one wave at one block per
// SM), else V3. One block past that, Warps16 needs a second wave or K splits, while V3's small
// blocks share SMs: on the H100 sweep (132 SMs, M <= 16) Warps16 won every N = 4096 shape
// (128 blocks) and lost every N >= 16384 one (512 and 1536 blocks, several V3 blocks per SM).
bool use_warps16(const Shape& s) { return s.tiles() <= s.sms; }

template <typename T>
Problem<T> problem_for(const at::Tensor& x2d, const at::Tensor& weight_int8,
                       const at::Tensor& weight_absmax, const at::Tensor& bias, at::Tensor& out) {
  return {x2d.const_data_ptr<T>(), x2d.size(0), x2d.size(1), weight_int8.size(0),
          weight_int8.const_data_ptr<int8_t>(), weight_absmax.const_data_ptr<float>(),
          BiasVector::of(bias), 0, 0,
          out.mutable_data_ptr<T>(), nullptr};
}

template <typename T>
void launch_for(const Problem<T>& p, const Shape& shape, const at::TensorOptions& options,
                cudaStream_t stream) {
  if (use_warps16(shape)) {
    launch<Warps16>(p, shape, options, stream);
  } else {
    launch<V3>(p, shape, options, stream);
  }
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
                                          const at::Tensor& bias, at::Tensor out) {
  const Shape shape{x2d.size(0), weight_int8.size(0), x2d.size(1),
                    device_facts(x2d.device().index()).multiprocessors};
  const auto stream = c10::cuda::getCurrentCUDAStream(x2d.device().index()).stream();
  if (x2d.scalar_type() == at::kHalf) {
    launch_for(problem_for<at::Half>(x2d, weight_int8, weight_absmax, bias, out), shape,
               x2d.options(), stream);
  } else {
    launch_for(problem_for<at::BFloat16>(x2d, weight_int8, weight_absmax, bias, out), shape,
               x2d.options(), stream);
  }
  return out;
}

}  // namespace llmint8
