// Hopper int8 x int8 GEMM (CUTLASS 3 warp-specialized wgmma + TMA) with a dequantizing epilogue.
//
// In CUTLASS's M x N x K terms, a [M, K] row-major is a K-major A and b [N, K] row-major is a
// K-major ("column-major") B: the only layout pair int8 wgmma accepts. The int32 accumulator
// never leaves the registers: an epilogue visitor tree scales it by row_absmax (one value per
// row m, a column-vector broadcast), col_absmax and bias (one value per column n, row-vector
// broadcasts), adds the outlier columns' product (outlier_product_sm90.cuh), and rounds once to
// fp16/bf16.
#include "int8_gemm_sm90.h"

#include <c10/util/Exception.h>

#if defined(LLMINT8_WITH_CUTLASS_SM90)

#include <cstdint>
#include <type_traits>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include "../core/llmint8_core.h"
#include "cutlass_sm90.h"
#include "outlier_product_sm90.cuh"

namespace llmint8 {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;
using sm90::kTmaAlignmentBytes;

// float(acc) * (row_absmax / 127^2) * col_absmax + bias: dequantize_value's order, so that the
// fused result matches the unfused dequant kernel bit for bit.
template <class Fragment>
struct DequantizeFragment {
  CUTLASS_HOST_DEVICE Fragment operator()(Fragment const& acc, Fragment const& row_absmax,
                                          Fragment const& col_absmax, Fragment const& bias) const {
    Fragment out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < static_cast<int>(Fragment::kElements); ++i) {
      out[i] = acc[i] * (row_absmax[i] * kInvInt8MaxSquared) * col_absmax[i] + bias[i];
    }
    return out;
  }
};

// The same plus the outlier columns' product, in fp32 before the one rounding. The product comes
// first among the children so that its loads go out before the broadcasts' (see OutlierProduct).
template <class Fragment>
struct DequantizeWithOutliersFragment {
  CUTLASS_HOST_DEVICE Fragment operator()(Fragment const& outliers, Fragment const& acc,
                                          Fragment const& row_absmax, Fragment const& col_absmax,
                                          Fragment const& bias) const {
    Fragment out = DequantizeFragment<Fragment>{}(acc, row_absmax, col_absmax, bias);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < static_cast<int>(Fragment::kElements); ++i) out[i] += outliers[i];
    return out;
  }
};

// The cooperative epilogue's own choice (CUTLASS's EpilogueTileAuto), named so that the outlier
// product can stage its operands by subtile.
using OutlierEpilogueTile = Shape<_128, _32>;

// Stages = 0: the broadcasts are read once per tile, not pipelined through shared memory.
// M is arbitrary, so row_absmax promises no vector alignment (a vector load could cross M).
template <class TileShape>
using RowAbsmaxBroadcast =
    fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, _0>, /*Alignment=*/1>;
template <class TileShape>
using PerColumnBroadcast = fusion::Sm90RowBroadcast<0, TileShape, float, float>;
// The bias in the output's dtype, as a module holds it, so that no conversion launch precedes the
// GEMM. A null pointer reads as 0 (EnableNullptr), which is how an absent bias costs nothing extra.
template <class TileShape, class Out>
using BiasBroadcast = fusion::Sm90RowBroadcast<0, TileShape, Out, float>;

template <class TileShape, class Out>
using DequantizeTree = fusion::Sm90EVT<
    fusion::Sm90Compute<DequantizeFragment, Out, float, cutlass::FloatRoundStyle::round_to_nearest>,
    fusion::Sm90AccFetch, RowAbsmaxBroadcast<TileShape>, PerColumnBroadcast<TileShape>,
    BiasBroadcast<TileShape, Out>>;
template <class TileShape, class Out>
using DequantizeWithOutliersTree = fusion::Sm90EVT<
    fusion::Sm90Compute<DequantizeWithOutliersFragment, Out, float, cutlass::FloatRoundStyle::round_to_nearest>,
    sm90::OutlierProduct<TileShape, OutlierEpilogueTile, Out>, fusion::Sm90AccFetch, RowAbsmaxBroadcast<TileShape>,
    PerColumnBroadcast<TileShape>, BiasBroadcast<TileShape, Out>>;

template <class TileShape_, class ClusterShape_, class KernelSchedule_, class EpilogueSchedule_,
          class TileScheduler_>
struct KernelConfig {
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using KernelSchedule = KernelSchedule_;
  using EpilogueSchedule = EpilogueSchedule_;
  using TileScheduler = TileScheduler_;
};

// Decode-sized M: few output tiles, so stream-K splits K across all SMs rather than leaving
// most of them idle; a 1x1 cluster keeps stream-K's work units unconstrained. Exact int32
// partial sums make the split deterministic. Stream-K needs the cooperative kernel, whose tile
// has at least 128 rows; for M <= 64 that wastes MMAs, but decode is bound by reading weights.
using SmallRowsConfig =
    KernelConfig<Shape<_128, _128, _128>, Shape<_1, _1, _1>,
                 cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
// Mid-sized M: 128x128 tiles still fill the GPU; ping-pong overlaps one warpgroup's epilogue
// with the other's mainloop. The 2x1 cluster multicasts each weight tile to two CTAs.
using MediumRowsConfig =
    KernelConfig<Shape<_128, _128, _128>, Shape<_2, _1, _1>,
                 cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                 cutlass::epilogue::TmaWarpSpecialized, cutlass::gemm::PersistentScheduler>;
// Prefill-sized M: the wide tile loads a quarter fewer operand bytes per output; a 128x256
// accumulator needs both warpgroups (cooperative), as one warpgroup would run out of registers.
using LargeRowsConfig =
    KernelConfig<Shape<_128, _256, _128>, Shape<_2, _1, _1>,
                 cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative,
                 cutlass::gemm::PersistentScheduler>;
// Mid-sized M with outliers: 128x128 tiles shared by both warpgroups, whose 64 accumulators per
// thread leave the outlier product the registers that ping-pong's 128 do not (ptxas spills).
// Past kMediumRowsMax the wide tile wins even with its stages cut from four to three by the
// epilogue's staged slots (H100, 1024->4096 at M = 8192: 124 against 141 us).
using MediumRowsWithOutliersConfig =
    KernelConfig<Shape<_128, _128, _128>, Shape<_2, _1, _1>,
                 cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative,
                 cutlass::gemm::PersistentScheduler>;
static_assert(kSm90MaxOutlierSlots == sm90::kMaxEpilogueSlots);
constexpr int64_t kSmallRowsMax = 128;
constexpr int64_t kMediumRowsMax = 1024;

template <class Config, class Out, bool kWithOutliers>
struct ScaledGemm {
  // C is void: no C load, no C shared memory (a null C pointer is not skipped).
  using ElementC = void;
  using TileShape = typename Config::TileShape;
  using Fusion = std::conditional_t<kWithOutliers, DequantizeWithOutliersTree<TileShape, Out>,
                                    DequantizeTree<TileShape, Out>>;
  using EpilogueTile =
      std::conditional_t<kWithOutliers, OutlierEpilogueTile, cutlass::epilogue::collective::EpilogueTileAuto>;
  static_assert(kSm90TileRows % size<0>(TileShape{}) == 0 && kSm90MaxTileCols % size<1>(TileShape{}) == 0);
  static constexpr int kAlignmentInt8 = kTmaAlignmentBytes;
  static constexpr int kAlignmentOut = kTmaAlignmentBytes / sizeof(Out);

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape,
      typename Config::ClusterShape, EpilogueTile, int32_t,
      float, ElementC, cutlass::layout::RowMajor, kAlignmentOut, Out, cutlass::layout::RowMajor,
      kAlignmentOut, typename Config::EpilogueSchedule, Fusion>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor,
      kAlignmentInt8, int8_t, cutlass::layout::ColumnMajor, kAlignmentInt8, int32_t, TileShape,
      typename Config::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      typename Config::KernelSchedule>::CollectiveOp;

  static_assert(!kWithOutliers || Epilogue::LoadPipeline::Stages == sm90::kEpilogueLoadStages,
                "the outlier product's weight buffers are one per epilogue load stage");

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      typename Config::TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// Raw operands of one call; bias may be null, and x_outliers is null when there are no outliers.
struct ScaledGemmOperands {
  const int8_t* a;
  const int8_t* b;
  const float* row_absmax;
  const float* col_absmax;
  const void* bias;
  const void* x_outliers;
  const void* w_cols;
  const int32_t* outlier_count;
  OutlierLayout outlier_layout;
  void* out;
  int m, n, k;
};

template <class Config, class Out, bool kWithOutliers>
typename ScaledGemm<Config, Out, kWithOutliers>::Gemm::Arguments gemm_arguments(
    const ScaledGemmOperands& op, int device) {
  using Kernel = typename ScaledGemm<Config, Out, kWithOutliers>::Kernel;
  const auto stride_a =
      cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(op.m, op.k, 1));
  const auto stride_b =
      cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(op.n, op.k, 1));
  const auto stride_c =
      cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, make_shape(op.m, op.n, 1));
  const auto stride_d =
      cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(op.m, op.n, 1));

  typename Kernel::EpilogueArguments epilogue{};
  // Children in DequantizeTree's order, then the compute node's (empty) arguments.
  if constexpr (kWithOutliers) {
    const auto& layout = op.outlier_layout;
    const typename sm90::OutlierProduct<typename Config::TileShape, OutlierEpilogueTile, Out>::Arguments outliers{
        static_cast<const Out*>(op.x_outliers), static_cast<const Out*>(op.w_cols), op.outlier_count,
        static_cast<int>(layout.capacity), layout.row_blocks, layout.col_blocks};
    epilogue.thread = {outliers, {}, {op.row_absmax}, {op.col_absmax}, {static_cast<const Out*>(op.bias)}, {}};
  } else {
    epilogue.thread = {{}, {op.row_absmax}, {op.col_absmax}, {static_cast<const Out*>(op.bias)}, {}};
  }
  epilogue.ptr_C = nullptr;
  epilogue.dC = stride_c;
  epilogue.ptr_D = static_cast<Out*>(op.out);
  epilogue.dD = stride_d;

  return {cutlass::gemm::GemmUniversalMode::kGemm,
          {op.m, op.n, op.k, 1},
          {op.a, stride_a, op.b, stride_b},
          epilogue,
          sm90::hardware_info(device)};
}

template <class Config, class Out, bool kWithOutliers>
void run_scaled_gemm(const ScaledGemmOperands& op, const at::Device& device) {
  sm90::run_gemm<typename ScaledGemm<Config, Out, kWithOutliers>::Gemm>(
      gemm_arguments<Config, Out, kWithOutliers>(op, device.index()), device, "sm90 int8 GEMM");
}

template <class Out, bool kWithOutliers>
void run_for_rows(const ScaledGemmOperands& op, const at::Device& device) {
  if (op.m <= kSmallRowsMax) {
    run_scaled_gemm<SmallRowsConfig, Out, kWithOutliers>(op, device);
  } else if (op.m <= kMediumRowsMax) {
    if constexpr (kWithOutliers) {
      run_scaled_gemm<MediumRowsWithOutliersConfig, Out, kWithOutliers>(op, device);
    } else {
      run_scaled_gemm<MediumRowsConfig, Out, kWithOutliers>(op, device);
    }
  } else {
    run_scaled_gemm<LargeRowsConfig, Out, kWithOutliers>(op, device);
  }
}

template <class Out>
void run_for_outliers(const ScaledGemmOperands& op, const at::Device& device) {
  if (op.x_outliers) {
    run_for_rows<Out, true>(op, device);
  } else {
    run_for_rows<Out, false>(op, device);
  }
}

constexpr int64_t kFragmentBufferAlignment = 256;

void check_fragment_buffer(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device,
                           int64_t elements) {
  sm90::check_on_device(t, name, dtype, device);
  TORCH_CHECK(t.numel() == elements, name, " must hold ", elements, " values, got ", t.numel());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kFragmentBufferAlignment == 0, name, " must be ",
              kFragmentBufferAlignment, "-byte aligned");
}

// x_outliers and w_cols in out's dtype and sm90_outlier_layout (1 <= capacity <=
// kSm90MaxOutlierSlots), 256-byte aligned for the epilogue's bulk copies, and the outlier count,
// one int32.
void check_outlier_operands(const OutlierProductOperands& outliers, at::ScalarType dtype,
                            const at::Device& device, int64_t m, int64_t n) {
  const auto& layout = outliers.layout;
  const auto expected = sm90_outlier_layout(m, n, layout.capacity);
  TORCH_CHECK(layout.capacity >= 1 && layout.capacity <= kSm90MaxOutlierSlots &&
                  layout.row_blocks == expected.row_blocks && layout.col_blocks == expected.col_blocks &&
                  layout.n_dim == n,
              "outlier operands must be laid out by sm90_outlier_layout(", m, ", ", n,
              ", capacity) with 1 <= capacity <= ", kSm90MaxOutlierSlots);
  check_fragment_buffer(outliers.x_outliers, "x_outliers", dtype, device, layout.x_elements(m));
  check_fragment_buffer(outliers.w_cols, "w_cols", dtype, device, layout.w_elements());
  sm90::check_vector_operand(outliers.count, "outlier count", device, 1, at::kInt);
}

}  // namespace

bool int8_scaled_gemm_sm90_applies(const at::Tensor& a_int8, const at::Tensor& b_int8,
                                   at::ScalarType out_dtype) {
  if (out_dtype != at::kHalf && out_dtype != at::kBFloat16) return false;
  if (!sm90::is_tma_matrix(a_int8, at::kChar) || !sm90::is_tma_matrix(b_int8, at::kChar)) {
    return false;
  }
  if (a_int8.device() != b_int8.device() || a_int8.size(1) != b_int8.size(1)) return false;
  // K int8 values per row of a and b, N 16-bit values per row of out.
  return sm90::are_tma_extents(a_int8.size(0), b_int8.size(0), a_int8.size(1)) &&
         sm90::is_compute_capability_90(a_int8.device());
}

void int8_scaled_gemm_sm90(const at::Tensor& a_int8, const at::Tensor& b_int8,
                           const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                           const at::Tensor& bias, const OutlierProductOperands& outliers,
                           at::Tensor& out) {
  TORCH_CHECK(int8_scaled_gemm_sm90_applies(a_int8, b_int8, out.scalar_type()),
              "int8_scaled_gemm_sm90: operands not supported (see int8_scaled_gemm_sm90_applies)");
  const auto device = a_int8.device();
  const int64_t m = a_int8.size(0), n = b_int8.size(0), k = a_int8.size(1);
  sm90::check_vector_operand(row_absmax, "row_absmax", device, m);
  sm90::check_vector_operand(col_absmax, "col_absmax", device, n);
  if (bias.defined()) sm90::check_bias_operand(bias, out.scalar_type(), device, n);
  if (outliers.defined()) check_outlier_operands(outliers, out.scalar_type(), device, m, n);
  sm90::check_matrix_operand(out, "out", out.scalar_type(), device, m, n);

  const c10::cuda::CUDAGuard guard(device);
  const ScaledGemmOperands op{a_int8.const_data_ptr<int8_t>(),
                              b_int8.const_data_ptr<int8_t>(),
                              row_absmax.const_data_ptr<float>(),
                              col_absmax.const_data_ptr<float>(),
                              bias.defined() ? bias.const_data_ptr() : nullptr,
                              outliers.defined() ? outliers.x_outliers.const_data_ptr() : nullptr,
                              outliers.defined() ? outliers.w_cols.const_data_ptr() : nullptr,
                              outliers.defined() ? outliers.count.const_data_ptr<int32_t>() : nullptr,
                              outliers.layout,
                              out.mutable_data_ptr(),
                              static_cast<int>(m),
                              static_cast<int>(n),
                              static_cast<int>(k)};
  if (out.scalar_type() == at::kHalf) {
    run_for_outliers<cutlass::half_t>(op, device);
  } else {
    run_for_outliers<cutlass::bfloat16_t>(op, device);
  }
}

}  // namespace llmint8

#else  // Built without CUTLASS: the caller always takes its unfused path.

namespace llmint8 {

bool int8_scaled_gemm_sm90_applies(const at::Tensor&, const at::Tensor&, at::ScalarType) {
  return false;
}

void int8_scaled_gemm_sm90(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const OutlierProductOperands&,
                           at::Tensor&) {
  TORCH_CHECK(false, "llmint8 was built without CUTLASS; int8_scaled_gemm_sm90 is unavailable");
}

}  // namespace llmint8

#endif
