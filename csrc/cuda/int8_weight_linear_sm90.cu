// Hopper 16-bit activations x int8 weight for mid-sized M (CUTLASS 3 mixed-input wgmma + TMA).
//
// Past decode (M <= 16, int8_weight_linear.cu) up to 128 rows a layer is still bound by reading its
// weight, and past that, on small products, the LLM.int8 decomposition's fixed cost (its split
// launch with a grid barrier) outweighs what 16-bit tensor cores lose to int8 ones
// (csrc/forward_rule.h). Here each int8 weight tile, loaded
// once by TMA, is widened in registers to x's dtype (exact: |v| <= 127) and multiplied on 16-bit
// tensor cores against up to 256 activation rows, with fp32 accumulation.
//
// wgmma takes only its A operand from registers, so the weight is A: in CUTLASS's M x N x K terms
// M is out_features, N is x's rows, and the [rows, out_features] row-major output is a
// column-major D. The epilogue scales each output channel by absmax / 127 and adds the bias.
#include "int8_weight_linear_sm90.h"

#include <c10/util/Exception.h>

#if defined(LLMINT8_WITH_CUTLASS_SM90)

#include <algorithm>
#include <cstdint>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include "../core/llmint8_core.h"
#include "cutlass_sm90.h"

namespace llmint8 {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;
using sm90::kTmaAlignmentBytes;

// float(acc) * (absmax / 127) + bias: the small-M kernel's order, so both W8A16 paths agree.
template <class Fragment>
struct ScaleByChannel {
  CUTLASS_HOST_DEVICE Fragment operator()(Fragment const& acc, Fragment const& absmax,
                                          Fragment const& bias) const {
    Fragment out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < static_cast<int>(Fragment::kElements); ++i) {
      out[i] = acc[i] * (absmax[i] / kInt8Max) + bias[i];
    }
    return out;
  }
};

// One value per output channel, i.e. per row of CUTLASS's M: a column-vector broadcast, read once
// per tile (Stages = 0), scalar loads (a sliced absmax promises no vector alignment). The fp32
// absmax, and the bias in the output's dtype as the module holds it (no conversion launch); a
// null bias reads as 0.
template <class TileShape, class Element = float>
using ChannelBroadcast =
    fusion::Sm90ColBroadcast<0, TileShape, Element, float, Stride<_1, _0, _0>, /*Alignment=*/1>;

template <class TileShape, class Out>
using ScaleByChannelTree =
    fusion::Sm90EVT<fusion::Sm90Compute<ScaleByChannel, Out, float,
                                        cutlass::FloatRoundStyle::round_to_nearest>,
                    fusion::Sm90AccFetch, ChannelBroadcast<TileShape>, ChannelBroadcast<TileShape, Out>>;

// 128 weight rows per tile (the cooperative kernel's two warpgroups of 64) against a tile of
// x rows sized to M, so small M wastes few MMAs; K tiles of 64 16-bit values (128 bytes, TMA's
// best) unless tiles_for picks 128. Few output tiles for N = 4096, so stream-K spreads K over all
// SMs (deterministic: the partial sums are reduced in a fixed order).
constexpr int kWeightRowsTile = 128;
constexpr int kKTile = 64;
constexpr int kLongKTile = 128;

template <int kRowsTile, class Out, int kKTileSize = kKTile>
struct WeightGemm {
  using TileShape = Shape<Int<kWeightRowsTile>, Int<kRowsTile>, Int<kKTileSize>>;
  using ClusterShape = Shape<_1, _1, _1>;
  static constexpr int kAlignmentInt8 = kTmaAlignmentBytes;
  static constexpr int kAlignment16 = kTmaAlignmentBytes / sizeof(Out);

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void,
      cutlass::layout::ColumnMajor, kAlignment16, Out, cutlass::layout::ColumnMajor, kAlignment16,
      cutlass::epilogue::TmaWarpSpecializedCooperative,
      ScaleByChannelTree<TileShape, Out>>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor,
      kAlignmentInt8, Out, cutlass::layout::ColumnMajor, kAlignment16, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cutlass::gemm::StreamKScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

struct WeightGemmOperands {
  const void* x;
  const int8_t* weight;
  const float* weight_absmax;
  const void* bias;
  void* out;
  int rows, n, k;
};

template <int kRowsTile, class Out, int kKTileSize = kKTile>
void run_weight_gemm(const WeightGemmOperands& op, const at::Device& device) {
  using Config = WeightGemm<kRowsTile, Out, kKTileSize>;
  using Kernel = typename Config::Kernel;
  const auto stride_weight =
      cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(op.n, op.k, 1));
  const auto stride_x =
      cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(op.rows, op.k, 1));
  const auto stride_out =
      cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(op.n, op.rows, 1));

  typename Kernel::EpilogueArguments epilogue{};
  // Children in ScaleByChannelTree's order, then the compute node's (empty) arguments.
  epilogue.thread = {{}, {op.weight_absmax}, {static_cast<const Out*>(op.bias)}, {}};
  epilogue.ptr_C = nullptr;
  epilogue.dC = stride_out;
  epilogue.ptr_D = static_cast<Out*>(op.out);
  epilogue.dD = stride_out;

  typename Config::Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {op.n, op.rows, op.k, 1},
      {op.weight, stride_weight, static_cast<const Out*>(op.x), stride_x},
      epilogue,
      sm90::hardware_info(device.index())};
  sm90::run_gemm<typename Config::Gemm>(arguments, device, "sm90 int8-weight GEMM");
}

constexpr int kNarrowestRowsTile = 32;
constexpr int kWidestRowsTile = 256;
// K up to 16 k tiles of 64: too short for stream-K to pay for its fixup.
constexpr int kShortK = 1024;

struct Tiles {
  int rows, k;
};

// The x-row tile: the smallest that holds every row (up to kWidestRowsTile), so small M wastes
// few MMAs, narrowed while the narrower tiles still fit one wave. One CTA fills an SM, so a second
// wave costs nearly a whole CTA's time again: each CTA re-widens its weight tile however few rows
// it multiplies (H100, 1024->4096: at 512 rows 19.0 us in 256 CTAs of 64 rows, 14.7 us in 128 of
// 128; at 256 rows 17.1 us in 256 CTAs of 32, 13.0 us in 128 of 64). For the same reason, past one
// wave the widest tile wins, re-widening each weight tile for 256 rows: at 1024 rows 20.3 against
// 22.8 us with 128-row tiles, at 2048 rows 33.3 against 39.3 us (fp16; bf16 alike).
//
// Stream-K splits K across the SMs when output tiles are few, and the splits of a tile add their
// partial sums in turn (the deterministic fixup) after a workspace memset. With a short K that
// serial fixup costs more than the work (1024->4096 at 128 rows: 11.6 us plus a 0.8 us memset
// against 4.3 us for fp16), so only a short K narrows below 128 rows, down to 32 with each weight
// tile read from L2 by up to four CTAs. Where even 32-row tiles leave half the SMs idle (1024->4096
// at 64 rows and fewer), each CTA's k tiles run one after another, and K tiles of 128 halve their
// steps: 14.2 -> 13.4 us (bf16) and 13.9 -> 13.0 (fp16) at 64 rows; with 128 CTAs (128 rows) they
// cost 0.4 us instead.
Tiles tiles_for(const WeightGemmOperands& op, const at::Device& device) {
  int rows = kNarrowestRowsTile;
  while (rows < kWidestRowsTile && rows < op.rows) rows *= 2;
  const bool short_k = op.k <= kShortK;
  const int narrowest = short_k ? kNarrowestRowsTile : std::min(rows, kWeightRowsTile);
  const int64_t weight_tiles = blocks_for(op.n, kWeightRowsTile);
  const int64_t sms = device_facts(device.index()).multiprocessors;
  const auto output_tiles = [&](int rows_tile) { return weight_tiles * blocks_for(op.rows, rows_tile); };
  while (rows > narrowest && output_tiles(rows / 2) <= sms) rows /= 2;
  const bool half_the_sms_idle = short_k && 2 * output_tiles(rows) <= sms;
  return {rows, half_the_sms_idle ? kLongKTile : kKTile};
}

template <class Out>
void run_for_rows(const WeightGemmOperands& op, const at::Device& device) {
  const Tiles tiles = tiles_for(op, device);
  // Only the narrowest row tile leaves SMs idle (a wider one narrows first), so only it comes
  // with long K tiles.
  if (tiles.rows == kNarrowestRowsTile && tiles.k == kLongKTile) {
    return run_weight_gemm<kNarrowestRowsTile, Out, kLongKTile>(op, device);
  }
  switch (tiles.rows) {
    case kNarrowestRowsTile: return run_weight_gemm<kNarrowestRowsTile, Out>(op, device);
    case 64: return run_weight_gemm<64, Out>(op, device);
    case 128: return run_weight_gemm<128, Out>(op, device);
    default: return run_weight_gemm<kWidestRowsTile, Out>(op, device);
  }
}

}  // namespace

bool int8_weight_linear_sm90_applies(const at::Tensor& x2d, const at::Tensor& weight_int8) {
  const auto dtype = x2d.scalar_type();
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (!sm90::is_tma_matrix(x2d, dtype) || !sm90::is_tma_matrix(weight_int8, at::kChar)) {
    return false;
  }
  if (x2d.device() != weight_int8.device() || x2d.size(1) != weight_int8.size(1)) return false;
  // K int8 values per weight row (16-bit activations need only K % 8), N outputs per row of out.
  return sm90::are_tma_extents(x2d.size(0), weight_int8.size(0), x2d.size(1)) &&
         sm90::is_compute_capability_90(x2d.device());
}

void int8_weight_linear_sm90(const at::Tensor& x2d, const at::Tensor& weight_int8,
                             const at::Tensor& weight_absmax, const at::Tensor& bias,
                             at::Tensor& out) {
  TORCH_CHECK(int8_weight_linear_sm90_applies(x2d, weight_int8),
              "int8_weight_linear_sm90: operands not supported (see int8_weight_linear_sm90_applies)");
  const auto device = x2d.device();
  const int64_t rows = x2d.size(0), n = weight_int8.size(0), k = x2d.size(1);
  sm90::check_vector_operand(weight_absmax, "weight_absmax", device, n);
  if (bias.defined()) sm90::check_bias_operand(bias, x2d.scalar_type(), device, n);
  sm90::check_matrix_operand(out, "out", x2d.scalar_type(), device, rows, n);

  const c10::cuda::CUDAGuard guard(device);
  const WeightGemmOperands op{x2d.const_data_ptr(),
                              weight_int8.const_data_ptr<int8_t>(),
                              weight_absmax.const_data_ptr<float>(),
                              bias.defined() ? bias.const_data_ptr() : nullptr,
                              out.mutable_data_ptr(),
                              static_cast<int>(rows),
                              static_cast<int>(n),
                              static_cast<int>(k)};
  if (x2d.scalar_type() == at::kHalf) {
    run_for_rows<cutlass::half_t>(op, device);
  } else {
    run_for_rows<cutlass::bfloat16_t>(op, device);
  }
}

}  // namespace llmint8

#else  // Built without CUTLASS: the caller always takes another path.

namespace llmint8 {

bool int8_weight_linear_sm90_applies(const at::Tensor&, const at::Tensor&) { return false; }

void int8_weight_linear_sm90(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, at::Tensor&) {
  TORCH_CHECK(false, "llmint8 was built without CUTLASS; int8_weight_linear_sm90 is unavailable");
}

}  // namespace llmint8

#endif
