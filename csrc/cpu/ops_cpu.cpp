// CPU kernels for the llmint8 operators: reference-quality loops over the torch-free core.
#include <ATen/ATen.h>
#include "../dispatch.h"
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../core/llmint8_core.h"
#include "../forward_rule.h"
#include "../reference.h"

namespace llmint8 {
namespace {

// Rows per parallel task: enough work per task to amortize scheduling.
constexpr int64_t kRowGrain = 16;

std::tuple<at::Tensor, at::Tensor, at::Tensor> outlier_split_cpu(const at::Tensor& x,
                                                                 double threshold,
                                                                 int64_t capacity) {
  check_float_input(x, "x");
  check_outlier_arguments(threshold, capacity);
  const auto x2d = x.contiguous().view({leading_rows(x), x.size(-1)});
  const int64_t rows = x2d.size(0), cols = x2d.size(1);

  auto is_outlier = at::zeros({cols}, x.options().dtype(at::kByte));
  LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "outlier_split", [&] {
    mark_outlier_columns(x2d.const_data_ptr<scalar_t>(), rows, cols, static_cast<float>(threshold),
                         is_outlier.mutable_data_ptr<uint8_t>());
  });
  auto outlier_cols = at::empty({capacity}, x.options().dtype(at::kInt));
  const int32_t count = compact_outlier_columns(is_outlier.const_data_ptr<uint8_t>(), cols,
                                                capacity, outlier_cols.mutable_data_ptr<int32_t>());
  // Padded slots gather column 0 and are then zeroed by a fill, not a multiply: 0 * inf is NaN.
  auto padded = outlier_cols.lt(0);
  auto gathered = x2d.index_select(1, outlier_cols.clamp_min(0)).masked_fill(padded, 0);
  auto x_outliers = gathered.view(with_last_dim(x, capacity));
  return {outlier_cols, at::full({}, count, x.options().dtype(at::kInt)), x_outliers};
}

// Byte mask [K] of the columns named by outlier_cols (-1 entries ignored); empty if none given.
at::Tensor excluded_columns_mask(const std::optional<at::Tensor>& outlier_cols, int64_t cols) {
  if (!outlier_cols.has_value()) return at::Tensor();
  auto mask = at::zeros({cols}, outlier_cols->options().dtype(at::kByte));
  auto* mask_data = mask.mutable_data_ptr<uint8_t>();
  const auto cols_contig = outlier_cols->contiguous();
  const auto* indices = cols_contig.const_data_ptr<int32_t>();
  for (int64_t slot = 0; slot < cols_contig.numel(); ++slot) {
    const int32_t col = indices[slot];
    TORCH_CHECK(col >= -1 && col < cols, "outlier_cols entries must be -1 (padding) or a column "
                "index in [0, ", cols, "), got ", col);
    if (col >= 0) mask_data[col] = 1;
  }
  return mask;
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x,
                                                     const at::Tensor& excluded) {
  const auto x2d = x.contiguous().view({leading_rows(x), x.size(-1)});
  const int64_t rows = x2d.size(0), cols = x2d.size(1);
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto absmax = at::empty(without_last_dim(x), x.options().dtype(at::kFloat));
  const uint8_t* excluded_data = excluded.defined() ? excluded.const_data_ptr<uint8_t>() : nullptr;
  LLMINT8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "quantize_rows", [&] {
    const auto* x_data = x2d.const_data_ptr<scalar_t>();
    auto* q_data = q.mutable_data_ptr<int8_t>();
    auto* absmax_data = absmax.mutable_data_ptr<float>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        absmax_data[r] = quantize_row(x_data + r * cols, cols, excluded_data, q_data + r * cols);
      }
    });
  });
  return {q, absmax};
}

std::tuple<at::Tensor, at::Tensor> quantize_rowwise_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& outlier_cols) {
  check_float_input(x, "x");
  check_outlier_cols(outlier_cols, x);
  return quantize_rows_cpu(x, excluded_columns_mask(outlier_cols, x.size(-1)));
}

std::tuple<at::Tensor, at::Tensor> quantize_colwise_cpu(const at::Tensor& weight) {
  check_float_input(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight must be 2D [N, K], got ", weight.dim(), "D");
  // Per output channel of W [N, K] is per row of W: the row quantizer with nothing excluded.
  return quantize_rows_cpu(weight, at::Tensor());
}

// torch's CPU int8 GEMM (oneDNN) is ~40x faster than a loop over rows, but torch 2.13's returns
// garbage for K = 1 (measured); K is zero-padded to a multiple of 8 first, which keeps it exact.
constexpr int64_t kCpuInt8GemmKMultiple = 8;

at::Tensor int8_matmul_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_matmul_operands(a, b);
  const int64_t m = leading_rows(a), n = b.size(0), k = b.size(1);
  if (m == 0 || n == 0 || k == 0) return at::zeros(with_last_dim(a, n), a.options().dtype(at::kInt));
  const auto a2d = zero_pad_columns(a.contiguous().view({m, k}), kCpuInt8GemmKMultiple);
  const auto b2d = zero_pad_columns(b.contiguous(), kCpuInt8GemmKMultiple);
  return at::_int_mm(a2d, b2d.t()).view(with_last_dim(a, n));
}

at::Tensor dequant_outer_cpu(const at::Tensor& acc, const at::Tensor& row_absmax,
                             const at::Tensor& col_absmax, const std::optional<at::Tensor>& bias,
                             at::ScalarType out_dtype) {
  check_dequant_operands(acc, row_absmax, col_absmax, bias, out_dtype);
  const int64_t rows = leading_rows(acc), n = acc.size(-1);
  const auto acc_c = acc.contiguous();
  const auto row_c = row_absmax.contiguous();
  const auto col_c = col_absmax.contiguous();
  const auto bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  auto out = at::empty(acc.sizes(), acc.options().dtype(out_dtype));
  LLMINT8_DISPATCH_FLOAT_TYPES(out_dtype, "dequant_outer", [&] {
    const auto* acc_data = acc_c.const_data_ptr<int32_t>();
    const auto* row_data = row_c.const_data_ptr<float>();
    const auto* col_data = col_c.const_data_ptr<float>();
    const float* bias_data = bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr;
    auto* out_data = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          const float value = dequantize_value(acc_data[r * n + c], row_data[r], col_data[c],
                                               bias_data ? bias_data[c] : 0.0f);
          out_data[r * n + c] = static_cast<scalar_t>(value);
        }
      }
    });
  });
  return out;
}

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight_int8,
                           const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias,
                           double threshold, int64_t capacity) {
  check_int8_linear_arguments(x, weight_int8, weight_absmax, bias, threshold, capacity);
  if (threshold == 0.0 || capacity == 0) {
    const auto quantized = quantize_rows_cpu(x, at::Tensor());
    const auto acc = int8_matmul_cpu(std::get<0>(quantized), weight_int8);
    return dequant_outer_cpu(acc, std::get<1>(quantized), weight_absmax, bias, x.scalar_type());
  }
  const auto outliers = outlier_split_cpu(x, threshold, capacity);
  const auto& outlier_cols = std::get<0>(outliers);
  const auto quantized = quantize_rows_cpu(x, excluded_columns_mask(outlier_cols, x.size(-1)));
  const auto acc = int8_matmul_cpu(std::get<0>(quantized), weight_int8);
  // Like the CUDA epilogue: the outlier product joins the dequantized result in fp32, and only
  // the sum is rounded to x's dtype. Padded slots gather column 0 but meet zeros in x_outliers.
  const auto out = dequant_outer_cpu(acc, std::get<1>(quantized), weight_absmax, bias, at::kFloat);
  const auto weight_cols = weight_int8.index_select(1, outlier_cols.clamp_min(0)).to(at::kFloat) *
                           (weight_absmax / kInt8Max).unsqueeze(1);
  return (out + at::matmul(std::get<2>(outliers).to(at::kFloat), weight_cols.t())).to(x.scalar_type());
}

at::Tensor int8_weight_linear_cpu(const at::Tensor& x, const at::Tensor& weight_int8,
                                  const at::Tensor& weight_absmax,
                                  const std::optional<at::Tensor>& bias) {
  check_int8_weight_operands(x, weight_int8, weight_absmax, bias);
  return int8_weight_linear_reference(x, weight_int8, weight_absmax, bias);
}

at::Tensor llm_int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight_int8,
                               const at::Tensor& weight_absmax, const std::optional<at::Tensor>& bias,
                               double threshold, int64_t capacity, bool exact_decomposition) {
  // Checked on every path, as on CUDA: a bad argument must not pass only with small batches.
  check_outlier_arguments(threshold, capacity);
  if (!exact_decomposition && is_small_batch(x)) {
    return int8_weight_linear_cpu(x, weight_int8, weight_absmax, bias);
  }
  return int8_linear_cpu(x, weight_int8, weight_absmax, bias, threshold, capacity);
}

}  // namespace

TORCH_LIBRARY_IMPL(llmint8, CPU, m) {
  m.impl("outlier_split", &outlier_split_cpu);
  m.impl("quantize_rowwise", &quantize_rowwise_cpu);
  m.impl("quantize_colwise", &quantize_colwise_cpu);
  m.impl("int8_matmul", &int8_matmul_cpu);
  m.impl("dequant_outer", &dequant_outer_cpu);
  m.impl("int8_weight_linear", &int8_weight_linear_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("llm_int8_linear", &llm_int8_linear_cpu);
}

}  // namespace llmint8
