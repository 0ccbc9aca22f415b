// Epilogue visitor for the sm90 int8 GEMM: LLM.int8's outlier columns' 16-bit product, formed on
// tensor cores where the accumulator is dequantized, so no [M, N] addend goes to memory and back.
#pragma once

#if defined(LLMINT8_WITH_CUTLASS_SM90)

#include <cstdint>
#include <type_traits>

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/half.h>

#include "../core/outlier_layout.h"

namespace llmint8::sm90 {

// The most outlier slots (int8_linear's default capacity) the epilogue takes: all of them fit in
// its shared memory, so its code holds no slower path that the unrolled subtile loops would repeat.
constexpr int kMaxEpilogueSlots = 64;
constexpr int kSlotChunks = kMaxEpilogueSlots / kFragmentSlots;
// The epilogue load pipeline's stages: what CUTLASS's builder gives a cooperative epilogue of at
// least four subtiles per tile (ScaledGemm checks it).
constexpr int kEpilogueLoadStages = 4;
constexpr int kLanes = kFragmentLanes;

// d = c + a (16x16, row-major fragment) * b (16x8, column-major fragment), fp32 accumulation.
template <class Out>
CUTLASS_DEVICE void mma_16x8x16(float (&d)[4], const uint4& a, const uint2& b, const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<Out, cutlass::half_t>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#endif
}

// Per output element (m, n): the sum over the used slots j of x_outliers[m, j] * w_cols[j, n],
// accumulated in fp32 by mma.sync; the count of used slots is read on the device (the host never
// waits). The wgmma accumulator gives each warp a 16-row block and each thread the mma.sync m16n8
// C-fragment positions within it, so a block's product lands in the registers of exactly the
// threads that hold its accumulators.
//
// Both operands arrive in fragment order (OutlierLayout), and the epilogue's producer warp copies
// them into shared memory as they stand, while the mainloop runs: the tile's x_outliers rows with
// its first subtile's load, double-buffered by tile, and each subtile's weight columns with that
// subtile's load, one buffer per pipeline stage. All shared-memory reads happen in previsit,
// before the stage's release, which is what lets the producer refill a buffer as soon as the
// pipeline hands it the stage: the x buffer it fills was last read a whole tile earlier, as the
// pipeline runs at most kEpilogueLoadStages subtiles ahead.
template <class TileShape, class EpilogueTile, class Out>
struct OutlierProduct {
  static constexpr int kTileM = cute::size<0>(TileShape{});
  static constexpr int kTileN = cute::size<1>(TileShape{});
  static constexpr int kSubtileN = cute::size<1>(EpilogueTile{});
  static constexpr int kSubtiles = kTileN / kSubtileN;
  static constexpr int kRowBlocks = kTileM / kFragmentRows;
  static constexpr int kSubtileColBlocks = kSubtileN / kFragmentCols;
  static constexpr uint32_t kXChunkBytes = kRowBlocks * kXFragmentElements * sizeof(Out);
  static constexpr uint32_t kWChunkBytes = kSubtileColBlocks * kWFragmentElements * sizeof(Out);
  static_assert(cute::size<0>(EpilogueTile{}) == kTileM, "a subtile spans the tile's rows, so x is staged per tile");
  static_assert(kSubtiles >= kEpilogueLoadStages - 1, "x's two buffers need a tile to span the pipeline's lead");
  static_assert(kSubtiles % kEpilogueLoadStages == 0, "every tile's first subtile takes the pipeline's first stage");

  struct SharedStorage {
    alignas(128) uint4 x_fragments[2][kSlotChunks][kRowBlocks][kLanes];
    alignas(128) uint2 w_fragments[kEpilogueLoadStages][kSlotChunks][kSubtileColBlocks][kLanes];
    // The chunks staged for the tile in each x buffer, which the consumers read in place of the count.
    int tile_chunks[2];
  };
  struct Arguments {
    const Out* x_fragments = nullptr;  // OutlierLayout's fragment order
    const Out* w_fragments = nullptr;
    const int32_t* count = nullptr;    // outlier columns found; may exceed capacity
    int capacity = 0;
    int64_t row_blocks = 0;
    int64_t col_blocks = 0;
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

  CUTLASS_DEVICE bool is_producer_load_needed() const { return true; }
  CUTLASS_DEVICE bool is_C_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_zero() const { return false; }

  // Which x buffer a tile uses, and the pipeline stage (so the weight-column buffer) of a subtile:
  // every tile runs all its subtiles through the pipeline (CUTLASS 4.2 never splits a tile's
  // epilogue: its stream-K separate reduction is disabled), so a subtile's stage is known at
  // compile time once the epilogue's loops unroll.
  static CUTLASS_DEVICE int x_buffer(int load_iteration) { return load_iteration / kSubtiles % 2; }
  static CUTLASS_DEVICE int stage_of(int epi_n) { return epi_n % kEpilogueLoadStages; }
  static CUTLASS_DEVICE bool is_first_subtile(int epi_m, int epi_n) { return epi_m == 0 && epi_n == 0; }

  struct ProducerLoadCallbacks : cutlass::epilogue::fusion::detail::EmptyProducerLoadCallbacks {
    CUTLASS_DEVICE ProducerLoadCallbacks(Params const& params, SharedStorage* shared, int tile_m, int tile_n,
                                         bool in_problem)
        : params(params), shared(shared), tile_m(tile_m), tile_n(tile_n), in_problem(in_problem) {}

    Params const& params;
    SharedStorage* shared;
    int tile_m, tile_n;
    // A cluster's grid rounds the tiles up to whole clusters: a tile past the output stores nothing,
    // and its copies would read past the operands' padding.
    bool in_problem;
    int chunks = 0;

    // The used slots are min(count, capacity): count may exceed capacity.
    CUTLASS_DEVICE void begin() { chunks = int(written_chunks(min(*params.count, params.capacity))); }

    CUTLASS_DEVICE void step(uint64_t* full_barrier, int epi_m, int epi_n, int load_iteration, bool issue_load) {
      if (!issue_load) return;
      const bool loads_x = is_first_subtile(epi_m, epi_n);
      if (loads_x) shared->tile_chunks[x_buffer(load_iteration)] = chunks;
      // A tile past the output copies nothing: its consumers multiply stale buffers into outputs
      // that are never stored.
      if (!in_problem) return;
      const int stage = stage_of(epi_n);
      cutlass::arch::ClusterTransactionBarrier::expect_transaction(
          full_barrier, chunks * ((loads_x ? kXChunkBytes : 0u) + kWChunkBytes));
      const int64_t first_row_block = tile_m / kFragmentRows;
      const int64_t first_col_block = (tile_n + epi_n * kSubtileN) / kFragmentCols;
      for (int chunk = 0; chunk < chunks; ++chunk) {
        if (loads_x) {
          cute::SM90_BULK_COPY_G2S::copy(
              params.x_fragments + (chunk * params.row_blocks + first_row_block) * kXFragmentElements, full_barrier,
              shared->x_fragments[x_buffer(load_iteration)][chunk], kXChunkBytes);
        }
        cute::SM90_BULK_COPY_G2S::copy(
            params.w_fragments + (chunk * params.col_blocks + first_col_block) * kWFragmentElements, full_barrier,
            shared->w_fragments[stage][chunk], kWChunkBytes);
      }
    }
  };

  template <class... Args>
  CUTLASS_DEVICE auto get_producer_load_callbacks(
      cutlass::epilogue::fusion::detail::ProducerLoadArgs<Args...> const& args) {
    const int tile_m = int(cute::get<0>(args.tile_coord_mnkl)) * kTileM;
    const int tile_n = int(cute::get<1>(args.tile_coord_mnkl)) * kTileN;
    const bool in_problem =
        tile_m < int(cute::get<0>(args.problem_shape_mnkl)) && tile_n < int(cute::get<1>(args.problem_shape_mnkl));
    return ProducerLoadCallbacks(params, shared, tile_m, tile_n, in_problem);
  }

  // Where a thread's values sit: its first element's mma blocks within the tile, and its lane.
  struct Placement {
    int row_block, col_block;
    int lane;
  };

  // An element's place relative to the thread's first one.
  struct Offset {
    int row, col;
    CUTLASS_DEVICE bool starts_block() const { return row % kFragmentRows == 0 && col % kFragmentCols == 0; }
    CUTLASS_DEVICE bool in_block_of(Offset first) const {
      return row / kFragmentRows == first.row / kFragmentRows && col / kFragmentCols == first.col / kFragmentCols;
    }
    // Its register in the block's C fragment: (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
    CUTLASS_DEVICE int c_register() const { return 2 * (row / 8 % 2) + col % 2; }
  };

  // RelativeCoords: each of the thread's elements as (row, column) offsets from its first one,
  // (CPY,CPY_M,CPY_N,EPI_M,EPI_N).
  template <class RelativeCoords>
  struct ConsumerStoreCallbacks : cutlass::epilogue::fusion::detail::EmptyConsumerStoreCallbacks {
    static constexpr int kSubtileValues =
        decltype(cute::size(cute::take<0, 3>(cute::shape(std::declval<RelativeCoords>()))))::value;
    static constexpr int kBlocks = kSubtileValues / 4;

    CUTLASS_DEVICE ConsumerStoreCallbacks(RelativeCoords coords, Placement at, SharedStorage* shared)
        : coords(coords), at(at), shared(shared) {}

    RelativeCoords coords;
    Placement at;
    SharedStorage* shared;
    // The tile's x buffer and used chunks, read at its first subtile.
    int tile_x_buffer = 0;
    int chunks = 0;
    // The subtile's product by mma block, in C-fragment registers: visit picks each value out.
    float product[kBlocks][4];

    CUTLASS_DEVICE Offset offset_in(int epi_m, int epi_n, int i) const {
      const auto offset = coords(cute::_, cute::_, cute::_, epi_m, epi_n)(i);
      return Offset{int(cute::get<0>(offset)), int(cute::get<1>(offset))};
    }

    // One chunk's share of the subtile's product, one mma per 16 x 8 block of the thread's values;
    // the first chunk's starts from zero, so the product needs no clearing. The offsets are
    // compile-time constants once the epilogue's loops unroll.
    template <bool kFirstChunk, class XChunk, class WChunk>
    CUTLASS_DEVICE void multiply_chunk(const XChunk& x, const WChunk& w, int epi_m, int epi_n) {
      const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const int first_col_block = at.col_block - epi_n * kSubtileColBlocks;
      int block = 0;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kSubtileValues; ++i) {
        const Offset first = offset_in(epi_m, epi_n, i);
        if (!first.starts_block()) continue;
        float(&d)[4] = product[block++];
        const uint4& a = x[at.row_block + first.row / kFragmentRows][at.lane];
        const uint2& b = w[first_col_block + first.col / kFragmentCols][at.lane];
        if constexpr (kFirstChunk) {
          mma_16x8x16<Out>(d, a, b, zero);
        } else {
          mma_16x8x16<Out>(d, a, b, d);
        }
      }
    }

    CUTLASS_DEVICE void previsit(int epi_m, int epi_n, int load_iteration, bool) {
      if (is_first_subtile(epi_m, epi_n)) {
        tile_x_buffer = x_buffer(load_iteration);
        chunks = shared->tile_chunks[tile_x_buffer];
      }
      const auto& x = shared->x_fragments[tile_x_buffer];
      const auto& w = shared->w_fragments[stage_of(epi_n)];
      multiply_chunk<true>(x[0], w[0], epi_m, epi_n);  // written_chunks: there is always one
#pragma unroll 1
      for (int chunk = 1; chunk < chunks; ++chunk) multiply_chunk<false>(x[chunk], w[chunk], epi_m, epi_n);
    }

    template <typename ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE cutlass::Array<float, FragmentSize> visit(cutlass::Array<ElementAccumulator, FragmentSize> const&,
                                                             int epi_v, int epi_m, int epi_n) {
      cutlass::Array<float, FragmentSize> values;
      int block = 0;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kSubtileValues; ++i) {
        const Offset first = offset_in(epi_m, epi_n, i);
        if (!first.starts_block()) continue;
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < FragmentSize; ++j) {
          const Offset other = offset_in(epi_m, epi_n, epi_v * FragmentSize + j);
          if (other.in_block_of(first)) values[j] = product[block][other.c_register()];
        }
        ++block;
      }
      return values;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(
      cutlass::epilogue::fusion::detail::ConsumerStoreArgs<Args...> const& args) {
    // (M, N) - residue is an origin: the tile's for residue_cD, the thread's for residue_tCcD.
    const int first_m = int(cute::get<0>(args.residue_cD)) - int(cute::get<0>(args.residue_tCcD));
    const int first_n = int(cute::get<1>(args.residue_cD)) - int(cute::get<1>(args.residue_tCcD));
    // The thread's first element is (g, 2t) of its block, g = lane / 4 and t = lane % 4.
    const int lane = args.thread_idx % kLanes;
    const Placement at{(first_m - lane / 4) / kFragmentRows, (first_n - 2 * (lane % 4)) / kFragmentCols, lane};
    return ConsumerStoreCallbacks<decltype(args.tCcD)>(args.tCcD, at, shared);
  }
};

}  // namespace llmint8::sm90

#endif
