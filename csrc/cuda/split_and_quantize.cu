// LLM.int8's activation side in one cooperative launch (split_and_quantize.h). Before it, the
// split took five dependent launches (flag reset, column scan, compaction, quantize-and-gather,
// weight-column gather), which at M = 512 on a 1024->4096 layer cost more GPU time than the
// whole 16-bit F.linear. Here one grid-wide barrier separates the scan for outlier columns from
// the rest.
#include "split_and_quantize.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "activation_vectors.cuh"
#include "grid_dependency.cuh"
#include "occupancy.h"

namespace llmint8 {
namespace {

constexpr int kSplitThreads = 512;
constexpr int kSplitWarps = kSplitThreads / kWarpSize;
// Each block ORs every row chunk's column words after the barrier, so the chunks times the words
// are capped: 16 KiB of reads per block, one batch of kPartialLoadsInFlight loads per thread.
constexpr int kPartialLoadsInFlight = 8;
constexpr int64_t kMaxPartialWords = int64_t(kSplitThreads) * kPartialLoadsInFlight;
// Vectors of a row each thread of a team holds in registers between the absmax and the quantize
// pass; a team has as many threads (a power-of-two number of warps) as that needs. Eight let two
// 14336-wide 16-bit rows be in flight per block where four allowed one.
constexpr int kTeamCachedVectors = 8;
// The column words, their running popcounts and the slot list live in dynamic shared memory,
// beside the static arrays, under the default 48 KiB per-block limit.
constexpr size_t kMaxSharedBytes = 44 * 1024;

struct SplitShape {
  int64_t rows, cols;
  OutlierLayout outliers;   // the capacity, N, and where x_outliers and w_cols keep their slots
  float threshold;
  int column_lanes;         // column scan: threads side by side along a row
  int64_t column_blocks;    // column scan: a block's width of vectors each
  int64_t row_chunks;       // chunks of rows whose column words every block ORs after the barrier
  int64_t rows_per_chunk;
  int team_warps;           // quantize: warps per row
};

// Threads side by side along a row in the column scan (a power of two): from the whole block (or
// just enough to cover a narrow row) down to one warp, until the column blocks times the most
// row chunks the barrier's reads allow give every resident block a task.
int scan_column_lanes(int64_t groups, int64_t words, int64_t resident) {
  int lanes = 1;
  while (lanes < kSplitThreads && lanes < groups) lanes *= 2;
  const int64_t max_chunks = std::max<int64_t>(1, kMaxPartialWords / words);
  while (lanes > kWarpSize && blocks_for(groups, lanes) * max_chunks < resident) lanes /= 2;
  return lanes;
}

// Phase one: the block's (column block, row chunk) tasks. Each task ORs the outlier bits of its
// rows for its columns and writes the words it owns into partial_words[chunk], zero words
// included, so that no buffer needs a reset between calls.
template <typename T, int kWidth>
__device__ void scan_column_chunks(const T* __restrict__ x, const SplitShape& s,
                                   uint32_t* __restrict__ partial_words, uint32_t* found_in_block) {
  const int64_t groups = s.cols / kWidth, words = blocks_for(s.cols, kBitsPerWord);
  const int column_lane = threadIdx.x % s.column_lanes, row_lane = threadIdx.x / s.column_lanes;
  const int row_lanes = kSplitThreads / s.column_lanes;
  const auto* vectors = reinterpret_cast<const Packed<T, kWidth>*>(x);
  for (int64_t task = blockIdx.x; task < s.column_blocks * s.row_chunks; task += gridDim.x) {
    const int64_t column_block = task % s.column_blocks, chunk = task / s.column_blocks;
    const int64_t first_group = column_block * s.column_lanes, group = first_group + column_lane;
    if (threadIdx.x < s.column_lanes) found_in_block[threadIdx.x] = 0;
    __syncthreads();
    uint32_t found = 0;
    if (group < groups) {
      const int64_t first_row = chunk * s.rows_per_chunk;
      found = column_outlier_bits(vectors + group, groups, first_row, min(s.rows, first_row + s.rows_per_chunk),
                                  row_lane, row_lanes, s.threshold);
    }
    if (found) atomicOr(&found_in_block[column_lane], found);
    __syncthreads();
    // The words whose first column lies in this block's span (all of them when one block spans
    // the row, however narrow); a word gathers kBitsPerWord / kWidth groups' bits.
    const int64_t first_word = first_group * kWidth / kBitsPerWord;
    const int64_t end_word =
        s.column_blocks == 1 ? words : min(words, blocks_for((first_group + s.column_lanes) * kWidth, kBitsPerWord));
    for (int64_t w = first_word + threadIdx.x; w < end_word; w += kSplitThreads) {
      uint32_t bits = 0;
      for (int j = 0; j < kBitsPerWord / kWidth; ++j) {
        const int64_t g = w * (kBitsPerWord / kWidth) + j;
        if (g >= first_group && g < min(groups, first_group + s.column_lanes)) {
          bits |= found_in_block[g - first_group] << (j * kWidth);
        }
      }
      partial_words[chunk * words + w] = bits;
    }
    __syncthreads();  // found_in_block is reused by the next task
  }
}

// Phase one where every row has a team of its own (kRowsHeld): the team has loaded
// its row into registers, where it stays across the grid barrier so that x is read once. The
// block ORs its rows' outlier bits into block_words and, if it holds a row, writes them as row
// chunk blockIdx.x.
template <typename T, int kWidth>
__device__ void scan_held_rows(const CachedRow<T, kWidth, kTeamCachedVectors>& held, bool holds_row,
                               const SplitShape& s, uint32_t* block_words, uint32_t* __restrict__ partial_words) {
  const int64_t words = blocks_for(s.cols, kBitsPerWord);
  for (int64_t w = threadIdx.x; w < words; w += kSplitThreads) block_words[w] = 0;
  __syncthreads();
  if (holds_row) {
    held.for_each([&](int64_t v, const Packed<T, kWidth>& vector) {
      const uint32_t bits = outlier_bits(vector, s.threshold);
      if (bits) set_vector_bits<kWidth>(block_words, v, bits);
    });
  }
  __syncthreads();
  if (blockIdx.x >= s.row_chunks) return;
  for (int64_t w = threadIdx.x; w < words; w += kSplitThreads) partial_words[blockIdx.x * words + w] = block_words[w];
}

// Phase two's start, in every block: the outlier columns as words of bits (split_bits, only those
// given a slot), and slot_cols[slot] = column for the first min(count, capacity) of them in
// ascending order. Block 0 also writes outlier_cols and count. Returns how many were split off.
__device__ int64_t build_split(const SplitShape& s, const uint32_t* __restrict__ partial_words,
                               uint32_t* split_bits, int32_t* words_before, int32_t* slot_cols,
                               int32_t* __restrict__ outlier_cols, int32_t* __restrict__ count) {
  using Scan = cub::BlockScan<int32_t, kSplitThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int64_t words = blocks_for(s.cols, kBitsPerWord);
  for (int64_t w = threadIdx.x; w < words; w += kSplitThreads) split_bits[w] = 0;
  __syncthreads();
  // Every thread takes part, with kPartialLoadsInFlight independent loads at a time: one word
  // per thread would leave most threads idle and walk the chunks one latency after another.
  // Written by other blocks in this launch: read through L2, past this SM's L1.
  const int64_t total = s.row_chunks * words;
  for (int64_t first = threadIdx.x; first < total; first += int64_t(kSplitThreads) * kPartialLoadsInFlight) {
    uint32_t loaded[kPartialLoadsInFlight];
#pragma unroll
    for (int j = 0; j < kPartialLoadsInFlight; ++j) {
      const int64_t i = first + int64_t(j) * kSplitThreads;
      loaded[j] = i < total ? __ldcg(&partial_words[i]) : 0u;
    }
#pragma unroll
    for (int j = 0; j < kPartialLoadsInFlight; ++j) {
      if (loaded[j]) atomicOr(&split_bits[(first + int64_t(j) * kSplitThreads) % words], loaded[j]);
    }
  }
  __syncthreads();
  int32_t seen = 0;
  for (int64_t base = 0; base < words; base += kSplitThreads) {
    const int64_t w = base + threadIdx.x;
    int32_t before = 0, tile_total = 0;
    Scan(scan_storage).ExclusiveSum(w < words ? __popc(split_bits[w]) : 0, before, tile_total);
    if (w < words) words_before[w] = seen + before;
    seen += tile_total;
    __syncthreads();  // scan_storage is reused by the next tile
  }
  const int64_t split = min(int64_t(seen), s.outliers.capacity);
  for (int64_t w = threadIdx.x; w < words; w += kSplitThreads) {
    uint32_t bits = split_bits[w], kept = 0;
    for (int64_t slot = words_before[w]; bits != 0 && slot < split; ++slot) {
      const int bit = __ffs(bits) - 1;
      bits &= bits - 1;
      kept |= 1u << bit;
      slot_cols[slot] = static_cast<int32_t>(w * kBitsPerWord + bit);
    }
    split_bits[w] = kept;
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int64_t slot = threadIdx.x; slot < s.outliers.capacity; slot += kSplitThreads) {
      outlier_cols[slot] = slot < split ? slot_cols[slot] : -1;
    }
    if (threadIdx.x == 0) *count = seen;
  }
  return split;
}

// This thread's place among the block's teams of team_warps warps each.
struct TeamPlace {
  int threads, teams, team, lane;
};
__device__ __forceinline__ TeamPlace team_place(int team_warps) {
  const int threads = team_warps * kWarpSize;
  return {threads, kSplitWarps / team_warps, static_cast<int>(threadIdx.x) / threads,
          static_cast<int>(threadIdx.x) % threads};
}

// Max over a team of team_warps warps (valid in every thread of the team). Teams of one warp
// need no barrier; larger ones meet at named barrier 1 + team, with maxima double-buffered by row
// parity so that a warp a row ahead cannot overwrite a value another warp has yet to read.
__device__ float team_max(float value, int team_warps, int team, int parity,
                          float (*team_maxima)[kSplitWarps]) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  if (team_warps == 1) return value;
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) team_maxima[parity][warp] = value;
  asm volatile("bar.sync %0, %1;" ::"r"(1 + team), "r"(team_warps * kWarpSize) : "memory");
  for (int i = 0; i < team_warps; ++i) value = fmaxf(value, team_maxima[parity][team * team_warps + i]);
  return value;
}

// One team's row (x_row, already loaded into cached_row) quantized after the split: as
// quantize_rows_kernel does for one block per row (same arithmetic, so the same int8 values and
// absmax), plus the row's split columns into x_outliers.
template <typename T, int kWidth>
__device__ __forceinline__ void quantize_team_row(const CachedRow<T, kWidth, kTeamCachedVectors>& cached_row,
                                                  const T* __restrict__ x_row, int64_t row, const SplitShape& s,
                                                  int64_t split, const uint32_t* split_bits, const int32_t* slot_cols,
                                                  int8_t* __restrict__ q, float* __restrict__ row_absmax,
                                                  T* __restrict__ x_outliers, int team, int parity,
                                                  float (*team_maxima)[kSplitWarps]) {
  auto excluded = [&](int64_t v) { return vector_bits<kWidth>(split_bits, v); };
  float absmax = cached_row.kept_absmax_part(excluded);
  for (int64_t slot = cached_row.lane; slot < s.outliers.written_slots(split); slot += cached_row.threads) {
    x_outliers[s.outliers.x_index(row, slot)] = slot < split ? x_row[slot_cols[slot]] : static_cast<T>(0.0f);
  }
  absmax = team_max(absmax, s.team_warps, team, parity, team_maxima);
  if (cached_row.lane == 0) row_absmax[row] = absmax;
  cached_row.store_quantized(excluded, inverse_step(absmax), q + row * s.cols);
}

// Phase two's rows: a team per row, loaded after the split.
template <typename T, int kWidth>
__device__ void quantize_rows_in_teams(const T* __restrict__ x, const SplitShape& s, int64_t split,
                                       const uint32_t* split_bits, const int32_t* slot_cols,
                                       int8_t* __restrict__ q, float* __restrict__ row_absmax,
                                       T* __restrict__ x_outliers, float (*team_maxima)[kSplitWarps]) {
  const TeamPlace place = team_place(s.team_warps);
  int parity = 0;
  for (int64_t row = blockIdx.x * int64_t(place.teams) + place.team; row < s.rows;
       row += int64_t(gridDim.x) * place.teams) {
    const T* x_row = x + row * s.cols;
    CachedRow<T, kWidth, kTeamCachedVectors> cached_row(x_row, s.cols, place.lane, place.threads);
    cached_row.load();
    quantize_team_row(cached_row, x_row, row, s, split, split_bits, slot_cols, q, row_absmax, x_outliers,
                      place.team, parity, team_maxima);
    parity ^= 1;
  }
}

// One block per SM: held to 64 registers for two, nvcc spilled the cached row (H100, 1024 -> 4096
// at M = 512, first block start to last block end: 13.1 us with the spills, 9.5 us without).
template <typename T, int kWidth, typename W, bool kRowsHeld>
__global__ void __launch_bounds__(kSplitThreads, 1)
split_and_quantize_kernel(const T* __restrict__ x, SplitShape s, uint32_t* __restrict__ partial_words,
                          int8_t* __restrict__ q, float* __restrict__ row_absmax,
                          int32_t* __restrict__ outlier_cols, int32_t* __restrict__ count,
                          T* __restrict__ x_outliers, const int8_t* __restrict__ weight,
                          const float* __restrict__ weight_scale, W* __restrict__ w_cols) {
  // split_bits [words] | words_before [words] | slot_cols [min(capacity, cols)]
  extern __shared__ uint32_t shared_words[];
  __shared__ uint32_t found_in_block[kSplitThreads];
  __shared__ float team_maxima[2][kSplitWarps];
  const int64_t words = blocks_for(s.cols, kBitsPerWord);
  uint32_t* split_bits = shared_words;
  auto* words_before = reinterpret_cast<int32_t*>(split_bits + words);
  int32_t* slot_cols = words_before + words;

  // One wave: every block has started, so the GEMM that reads this launch's output may start its
  // prologue on the SMs that are idle or done.
  let_next_grid_launch();
  const TeamPlace place = team_place(s.team_warps);
  const int64_t held_row = blockIdx.x * int64_t(place.teams) + place.team;
  const bool holds_row = kRowsHeld && held_row < s.rows;
  const T* x_held_row = x + (holds_row ? held_row : 0) * s.cols;
  // The team's row, loaded only where rows are held (the column scan reads x twice instead).
  CachedRow<T, kWidth, kTeamCachedVectors> held(x_held_row, s.cols, place.lane, place.threads);
  if constexpr (kRowsHeld) {
    if (holds_row) held.load();
    scan_held_rows<T, kWidth>(held, holds_row, s, split_bits, partial_words);
  } else {
    scan_column_chunks<T, kWidth>(x, s, partial_words, found_in_block);
  }
  cooperative_groups::this_grid().sync();
  const int64_t split = build_split(s, partial_words, split_bits, words_before, slot_cols, outlier_cols, count);
  gather_weight_columns(
      s.outliers, s.outliers.w_written_elements(split),
      [&](int64_t slot) { return slot < split ? slot_cols[slot] : -1; }, weight, s.cols, weight_scale, w_cols);
  if constexpr (kRowsHeld) {
    if (holds_row) {
      quantize_team_row(held, x_held_row, held_row, s, split, split_bits, slot_cols, q, row_absmax, x_outliers,
                        place.team, /*parity=*/0, team_maxima);
    }
  } else {
    quantize_rows_in_teams<T, kWidth>(x, s, split, split_bits, slot_cols, q, row_absmax, x_outliers, team_maxima);
  }
}

size_t shared_bytes_for(int64_t cols, int64_t capacity) {
  return (2 * blocks_for(cols, kBitsPerWord) + std::min(capacity, cols)) * sizeof(uint32_t);
}

// The smallest power-of-two number of warps whose threads hold a row's vectors in registers.
int team_warps_for(int64_t vector_count) {
  int warps = 1;
  while (warps < kSplitWarps && int64_t(warps) * kWarpSize * kTeamCachedVectors < vector_count) warps *= 2;
  return warps;
}

// The column scan's tasks: (column block, row chunk) pairs, as many as leave one per resident
// block, each at least one row per thread stacked on a column, and few enough chunks that every
// block can OR them all after the barrier.
void plan_column_scan(SplitShape& s, int64_t groups, int64_t words, int64_t resident) {
  s.column_lanes = scan_column_lanes(groups, words, resident);
  s.column_blocks = blocks_for(groups, s.column_lanes);
  const int64_t row_lanes = kSplitThreads / s.column_lanes;
  s.row_chunks = std::clamp<int64_t>(std::min(resident / s.column_blocks, blocks_for(s.rows, row_lanes)), 1,
                                     std::max<int64_t>(1, kMaxPartialWords / words));
  s.rows_per_chunk = blocks_for(s.rows, s.row_chunks);
  s.row_chunks = blocks_for(s.rows, s.rows_per_chunk);
}

template <typename T, int kWidth, typename W>
void launch_split_and_quantize(const at::Tensor& x, float threshold, const at::Tensor& weight,
                               const at::Tensor& weight_scale, QuantizedActivations& a) {
  SplitShape s{};
  s.rows = leading_rows(x);
  s.cols = x.size(-1);
  s.outliers = a.outlier_layout;
  s.threshold = threshold;
  const int64_t groups = s.cols / kWidth, words = blocks_for(s.cols, kBitsPerWord);
  s.team_warps = team_warps_for(groups);
  const size_t shared_bytes = shared_bytes_for(s.cols, s.outliers.capacity);
  // Both kernels hold one block per SM (__launch_bounds__) with the same shared memory.
  const auto column_kernel = split_and_quantize_kernel<T, kWidth, W, false>;
  const int64_t resident =
      resident_blocks(reinterpret_cast<const void*>(column_kernel), kSplitThreads, shared_bytes);
  // Rows are held where one wave gives every row a team and the blocks holding rows leave few
  // enough column words for one round of reads after the barrier; else the column scan.
  const int64_t teams = kSplitWarps / s.team_warps, row_blocks = blocks_for(s.rows, teams);
  const bool rows_held = row_blocks <= resident && row_blocks * words <= kMaxPartialWords;
  if (rows_held) {
    s.row_chunks = row_blocks;
  } else {
    plan_column_scan(s, groups, words, resident);
  }
  // Held rows scan in the row blocks themselves.
  const int64_t scan_blocks = rows_held ? 0 : s.column_blocks * s.row_chunks;
  const int64_t wanted = std::max({scan_blocks, row_blocks,
                                   blocks_for(s.outliers.stored_slots() * s.outliers.n_dim, kSplitThreads)});
  const int grid = static_cast<int>(std::min(resident, wanted));
  const auto kernel = rows_held ? split_and_quantize_kernel<T, kWidth, W, true> : column_kernel;

  auto partial_words = at::empty({s.row_chunks * words}, x.options().dtype(at::kInt));
  const T* x_data = x.const_data_ptr<T>();
  auto* partial = reinterpret_cast<uint32_t*>(partial_words.mutable_data_ptr<int32_t>());
  auto* q = a.x_int8.mutable_data_ptr<int8_t>();
  auto* absmax = a.x_absmax.mutable_data_ptr<float>();
  auto* cols = a.outlier_cols.mutable_data_ptr<int32_t>();
  auto* count = a.outlier_count.mutable_data_ptr<int32_t>();
  auto* x_outliers = a.x_outliers.mutable_data_ptr<T>();
  const int8_t* w = weight.const_data_ptr<int8_t>();
  const float* scale = weight_scale.const_data_ptr<float>();
  auto* w_cols = a.w_cols.mutable_data_ptr<W>();
  void* args[] = {&x_data, &s, &partial, &q, &absmax, &cols, &count, &x_outliers, &w, &scale, &w_cols};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, kSplitThreads, args,
                                             shared_bytes, c10::cuda::getCurrentCUDAStream(x.device().index())));
}

}  // namespace

// Past a third of L2, x's second pass comes from memory, where the separate mark and quantize
// kernels, with more rows in flight per SM, stream it faster (H100, bf16 8192 x 14336: 1012 us
// for the layer against 933 us; at 16 MiB and below the one launch wins or ties).
bool split_and_quantize_applies(const at::Tensor& x, int64_t capacity) {
  if (x.dim() == 0 || x.size(-1) == 0 || x.numel() == 0 || capacity <= 0) return false;
  return shared_bytes_for(x.size(-1), capacity) <= kMaxSharedBytes &&
         x.nbytes() <= size_t(device_facts(x.device().index()).l2_bytes / 3);
}

void split_and_quantize(const at::Tensor& x, double threshold, const at::Tensor& weight,
                        const at::Tensor& weight_scale, QuantizedActivations& a) {
  TORCH_CHECK(split_and_quantize_applies(x, a.outlier_cols.numel()),
              "split_and_quantize: x's shape and capacity do not fit one launch (see split_and_quantize_applies)");
  const c10::cuda::CUDAGuard guard(x.device());
  LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "split_and_quantize", [&] {
    using T = scalar_t;
    with_access_width(x.const_data_ptr<T>(), x.size(-1), [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      if (a.w_cols.scalar_type() == at::kFloat) {
        launch_split_and_quantize<T, kWidth, float>(x, static_cast<float>(threshold), weight, weight_scale, a);
      } else {
        launch_split_and_quantize<T, kWidth, T>(x, static_cast<float>(threshold), weight, weight_scale, a);
      }
    });
  });
}

}  // namespace llmint8
