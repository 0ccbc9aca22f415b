// Epilogue visitor for the sm90 int8 GEMM: LLM.int8's outlier columns' 16-bit product, formed on
// tensor cores where the accumulator is dequantized, so no [M, N] addend goes to memory and back.
#pragma once

#if defined(LLMINT8_WITH_CUTLASS_SM90)

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/half.h>

namespace llmint8::sm90 {

// One mma.sync.m16n8k16: a 16-row block of x_outliers times an 8-column block of the weight's
// outlier columns over 16 slots.
constexpr int kMmaRows = 16;
constexpr int kMmaCols = 8;
constexpr int kMmaSlots = 16;
// Two 16-bit values per 32-bit fragment register.
constexpr int kSlotPairs = kMmaSlots / 2;
// The most outlier slots the epilogue takes (int8_linear's default capacity): all of them sit in
// shared memory, so the epilogue's code holds no slower path that its unrolled loops would repeat.
constexpr int kMaxEpilogueSlots = 64;
constexpr int kSlotChunks = kMaxEpilogueSlots / kMmaSlots;
constexpr int kLanes = 32;
// The fewest threads an epilogue may run with (one warpgroup), which sizes the staging loops; the
// cooperative kernels' 256 threads leave half their iterations predicated off.
constexpr int kMinEpilogueThreads = 128;

// d += a (16x16, row-major fragment) * b (16x8, column-major fragment), fp32 accumulation.
template <class Out>
CUTLASS_DEVICE void mma_16x8x16(float (&d)[4], const uint4& a, const uint2& b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<Out, cutlass::half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y));
  }
#endif
}

// Two 16-bit values as one fragment register, the first in the low half; zero where not valid.
template <class Out>
CUTLASS_DEVICE uint32_t load_pair(const Out* values, int64_t first, bool first_valid, int64_t second,
                                  bool second_valid) {
  const uint32_t low = first_valid ? values[first].raw() : 0u;
  const uint32_t high = second_valid ? values[second].raw() : 0u;
  return low | (high << 16);
}

// One thread's share of 16 slots of kLines lines (tile rows or columns) of one operand, loaded as
// slot pairs and stored in fragment order; consecutive threads take what is consecutive in memory,
// slots (x_outliers' rows) or lines (w_cols_t's columns).
template <class Out, int kLines, bool kSlotsContiguous>
struct StagedPairs {
  static constexpr int kPairs = kLines * kSlotPairs;
  static constexpr int kPerThread = (kPairs + kMinEpilogueThreads - 1) / kMinEpilogueThreads;
  uint32_t pairs[kPerThread];

  static CUTLASS_DEVICE int line_of(int i) { return kSlotsContiguous ? i / kSlotPairs : i % kLines; }
  static CUTLASS_DEVICE int pair_of(int i) { return kSlotsContiguous ? i % kSlotPairs : i / kLines; }

  // offset(line, slot): the slot's index in values, -1 for a line past the output's edge; the
  // slot after it is slot_stride further on.
  template <class Offset>
  CUTLASS_DEVICE void load(const Out* values, Offset offset, int64_t slot_stride, int first_slot, int capacity,
                           int thread_idx, int threads) {
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kPerThread; ++j) {
      const int i = thread_idx + j * threads, slot = first_slot + 2 * pair_of(i);
      const int64_t first = i < kPairs ? offset(line_of(i), slot) : int64_t(-1);
      const bool line_valid = first >= 0;
      pairs[j] = load_pair(values, first, line_valid && slot < capacity, first + slot_stride,
                           line_valid && slot + 1 < capacity);
    }
  }

  template <class Word>
  CUTLASS_DEVICE void store(uint32_t* words, Word fragment_word, int thread_idx, int threads) const {
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kPerThread; ++j) {
      const int i = thread_idx + j * threads;
      if (i < kPairs) words[fragment_word(line_of(i), pair_of(i))] = pairs[j];
    }
  }
};

// Per output element (m, n): the sum over the used slots j of x_outliers[m, j] * w_cols_t[j, n],
// accumulated in fp32 by mma.sync, where used = min(*count, capacity) is read on the device (the
// host never waits). The wgmma accumulator gives each warp a 16-row block and each thread the
// mma.sync m16n8 C-fragment positions within it, so a block's product lands in the registers of
// exactly the threads that hold its accumulators.
// Each tile stages its rows of x_outliers and its columns' weights in shared memory in fragment
// order (one 16-byte and one 8-byte load per lane per block), 16 slots at a time up to the used
// ones; padded slots are zero in both operands. capacity <= kMaxEpilogueSlots.
template <class TileShape, class Out>
struct OutlierProduct {
  static constexpr int kTileM = cute::size<0>(TileShape{});
  static constexpr int kTileN = cute::size<1>(TileShape{});
  static constexpr int kRowBlocks = kTileM / kMmaRows;
  static constexpr int kColBlocks = kTileN / kMmaCols;

  struct SharedStorage {
    alignas(16) uint4 x_fragments[kSlotChunks][kRowBlocks][kLanes];
    alignas(16) uint2 w_fragments[kSlotChunks][kColBlocks][kLanes];
  };
  struct Arguments {
    const Out* x_outliers = nullptr;  // [M, capacity]
    const Out* w_cols_t = nullptr;    // [capacity, N]
    const int32_t* count = nullptr;   // outlier columns found; may exceed capacity
    int capacity = 0;
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const&) {
    return true;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  CUTLASS_HOST_DEVICE OutlierProduct() {}
  CUTLASS_HOST_DEVICE OutlierProduct(Params const& params, SharedStorage const& shared)
      : params(params), shared(const_cast<SharedStorage*>(&shared)) {}

  Params params;
  SharedStorage* shared = nullptr;

  CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_C_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_zero() const { return false; }

  template <class... Args>
  CUTLASS_DEVICE auto get_producer_load_callbacks(cutlass::epilogue::fusion::detail::ProducerLoadArgs<Args...> const&) {
    return cutlass::epilogue::fusion::detail::EmptyProducerLoadCallbacks{};
  }

  // Where a thread's values sit: the tile's origin in the output, the thread's mma blocks within
  // the tile, and its lane's position in them.
  struct Placement {
    int tile_m, tile_n;
    int row_block, col_block;  // of the thread's first element
    int lane;
    int m_dim, n_dim;
  };

  // RelativeCoords: each of the thread's elements as (row, column) offsets from its first one.
  template <class RelativeCoords>
  struct ConsumerStoreCallbacks : cutlass::epilogue::fusion::detail::EmptyConsumerStoreCallbacks {
    CUTLASS_DEVICE ConsumerStoreCallbacks(RelativeCoords coords, Placement at, int thread_idx, int threads,
                                          Params const& params, SharedStorage* shared)
        : coords(coords), at(at), thread_idx(thread_idx), threads(threads), params(params), shared(shared) {}

    RelativeCoords coords;  // (CPY,CPY_M,CPY_N,EPI_M,EPI_N)
    Placement at;
    int thread_idx, threads;
    Params const& params;
    SharedStorage* shared;
    // One chunk of 16 slots of both operands, in flight between its loads and its stores.
    struct ChunkPairs {
      StagedPairs<Out, kTileM, /*kSlotsContiguous=*/true> x;
      StagedPairs<Out, kTileN, /*kSlotsContiguous=*/false> w;
    };
    ChunkPairs first_chunk;
    int count = 0;
    int chunks = 1;  // of 16 slots, holding the used ones (the first is staged whatever the count)

    // The count's and the first chunk's loads go out here, and land while the other nodes'
    // begin() read their broadcasts; previsit stores them.
    CUTLASS_DEVICE void begin() {
      count = *params.count;
      load_chunk(0, first_chunk);
    }

    CUTLASS_DEVICE bool begin_sync_needed() const { return false; }

    // Before the tile's first subtile: the first chunk into shared memory, the other used chunks
    // loaded and stored, then one barrier of the epilogue's threads.
    CUTLASS_DEVICE void previsit(int epi_m, int epi_n, int, bool) {
      if (epi_m != 0 || epi_n != 0) return;
      store_chunk(0, first_chunk);
      const int used = min(count, params.capacity);
      chunks = max(1, (used + kMmaSlots - 1) / kMmaSlots);
      for (int chunk = 1; chunk < chunks; ++chunk) {
        ChunkPairs pairs;  // both operands' loads go out before any is stored: one latency per chunk
        load_chunk(chunk, pairs);
        store_chunk(chunk, pairs);
      }
      cutlass::arch::NamedBarrier::sync(threads, cutlass::arch::ReservedNamedBarriers::EpilogueBarrier);
    }

    CUTLASS_DEVICE auto x_offset() const {
      return [this](int row, int slot) {
        const int64_t m = at.tile_m + row;
        return m < at.m_dim ? m * params.capacity + slot : int64_t(-1);
      };
    }
    CUTLASS_DEVICE auto w_offset() const {
      return [this](int col, int slot) {
        const int64_t n = at.tile_n + col;
        return n < at.n_dim ? int64_t(slot) * at.n_dim + n : int64_t(-1);
      };
    }

    CUTLASS_DEVICE void load_chunk(int chunk, ChunkPairs& pairs) const {
      const int first_slot = chunk * kMmaSlots;
      pairs.x.load(params.x_outliers, x_offset(), 1, first_slot, params.capacity, thread_idx, threads);
      pairs.w.load(params.w_cols_t, w_offset(), at.n_dim, first_slot, params.capacity, thread_idx, threads);
    }
    CUTLASS_DEVICE void store_chunk(int chunk, const ChunkPairs& pairs) const {
      pairs.x.store(reinterpret_cast<uint32_t*>(shared->x_fragments[chunk]), x_fragment_word, thread_idx, threads);
      pairs.w.store(reinterpret_cast<uint32_t*>(shared->w_fragments[chunk]), w_fragment_word, thread_idx, threads);
    }

    // A fragment: a0 (row g, slots 2t..), a1 (row g + 8), a2 (slots 2t + 8..), a3 (both), for
    // lane 4g + t.
    static CUTLASS_DEVICE int x_fragment_word(int row, int pair) {
      const int lane = (row % 8) * 4 + pair % 4;
      const int reg = (row % kMmaRows) / 8 + 2 * (pair / 4);
      return ((row / kMmaRows) * kLanes + lane) * 4 + reg;
    }
    // B fragment: b0 (slots 2t.., column g), b1 (slots 2t + 8..), for lane 4g + t.
    static CUTLASS_DEVICE int w_fragment_word(int col, int pair) {
      const int lane = (col % kMmaCols) * 4 + pair % 4;
      return ((col / kMmaCols) * kLanes + lane) * 2 + pair / 4;
    }

    // An element's place relative to the thread's first one.
    struct Offset {
      int row, col;
      CUTLASS_DEVICE bool starts_block() const { return row % kMmaRows == 0 && col % kMmaCols == 0; }
      CUTLASS_DEVICE bool in_block_of(Offset first) const {
        return row / kMmaRows == first.row / kMmaRows && col / kMmaCols == first.col / kMmaCols;
      }
      // Its register in the block's C fragment: (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
      CUTLASS_DEVICE int c_register() const { return 2 * (row / 8 % 2) + col % 2; }
    };

    // The offsets below are compile-time constants once the epilogue's loops unroll: per chunk of
    // slots, one mma per 16 x 8 block of the fragment, its operands from shared memory.
    template <typename ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE cutlass::Array<float, FragmentSize> visit(cutlass::Array<ElementAccumulator, FragmentSize> const&,
                                                             int epi_v, int epi_m, int epi_n) {
      constexpr int kBlocks = FragmentSize / 4;
      float d[kBlocks][4] = {};
      auto subtile = coords(cute::_, cute::_, cute::_, epi_m, epi_n);
      auto offset_of = [&](int i) {
        const auto offset = subtile(epi_v * FragmentSize + i);
        return Offset{int(cute::get<0>(offset)), int(cute::get<1>(offset))};
      };
#pragma unroll 1
      for (int chunk = 0; chunk < chunks; ++chunk) {
        int block = 0;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < FragmentSize; ++i) {
          const Offset first = offset_of(i);
          if (!first.starts_block()) continue;
          mma_16x8x16<Out>(d[block++], shared->x_fragments[chunk][at.row_block + first.row / kMmaRows][at.lane],
                           shared->w_fragments[chunk][at.col_block + first.col / kMmaCols][at.lane]);
        }
      }
      cutlass::Array<float, FragmentSize> product;
      int block = 0;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; ++i) {
        const Offset first = offset_of(i);
        if (!first.starts_block()) continue;
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < FragmentSize; ++j) {
          const Offset other = offset_of(j);
          if (other.in_block_of(first)) product[j] = d[block][other.c_register()];
        }
        ++block;
      }
      return product;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(
      cutlass::epilogue::fusion::detail::ConsumerStoreArgs<Args...> const& args) {
    const auto [m_dim, n_dim, k_dim, l_dim] = args.problem_shape_mnkl;
    // (M, N) - residue is an origin: the tile's for residue_cD, the thread's for residue_tCcD.
    const int tile_m = int(m_dim) - int(cute::get<0>(args.residue_cD));
    const int tile_n = int(n_dim) - int(cute::get<1>(args.residue_cD));
    const int first_m = int(m_dim) - int(cute::get<0>(args.residue_tCcD)) - tile_m;
    const int first_n = int(n_dim) - int(cute::get<1>(args.residue_tCcD)) - tile_n;
    // The thread's first element is (g, 2t) of its block, g = lane / 4 and t = lane % 4.
    const int lane = args.thread_idx % kLanes;
    const Placement at{tile_m, tile_n, (first_m - lane / 4) / kMmaRows, (first_n - 2 * (lane % 4)) / kMmaCols,
                       lane, int(m_dim), int(n_dim)};
    return ConsumerStoreCallbacks<decltype(args.tCcD)>(args.tCcD, at, args.thread_idx, int(size(args.tiled_copy)),
                                                       params, shared);
  }
};

}  // namespace llmint8::sm90

#endif
