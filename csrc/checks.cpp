// Argument validation shared by every device's kernels.
#include "checks.h"

#include <c10/util/Exception.h>
#include <cmath>

namespace llmint8 {

void check_float_input(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat, name,
              " must be float16, bfloat16 or float32, got ", dtype);
  TORCH_CHECK(t.dim() >= 1, name, " must have at least one dimension, got a scalar");
}

void check_int8_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kChar, name, " must be int8, got ", t.scalar_type());
  TORCH_CHECK(t.dim() >= 1, name, " must have at least one dimension, got a scalar");
}

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                       const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), b_name, " must be on the same device as ", a_name,
              " (", a.device(), "), got ", b.device());
}

void check_threshold(double threshold) {
  TORCH_CHECK(std::isfinite(threshold) && threshold >= 0.0,
              "threshold must be a finite number >= 0 (0 disables outliers), got ", threshold);
}

void check_outlier_arguments(double threshold, int64_t capacity) {
  check_threshold(threshold);
  TORCH_CHECK(capacity >= 0, "capacity must be >= 0, got ", capacity);
}

void check_outlier_cols(const std::optional<at::Tensor>& outlier_cols, const at::Tensor& x) {
  if (!outlier_cols.has_value()) return;
  const auto& cols = *outlier_cols;
  TORCH_CHECK(cols.scalar_type() == at::kInt, "outlier_cols must be int32, got ",
              cols.scalar_type());
  TORCH_CHECK(cols.dim() == 1, "outlier_cols must be 1D [capacity], got ", cols.dim(), "D");
  check_same_device(x, "x", cols, "outlier_cols");
}

void check_matmul_operands(const at::Tensor& a, const at::Tensor& b) {
  check_int8_input(a, "a");
  check_int8_input(b, "b");
  TORCH_CHECK(b.dim() == 2, "b must be 2D [N, K], got ", b.dim(), "D");
  TORCH_CHECK(a.size(-1) == b.size(1), "a's last dimension (K = ", a.size(-1),
              ") must equal b's second dimension (", b.size(1), ")");
  check_same_device(a, "a", b, "b");
}

void check_dequant_operands(const at::Tensor& acc, const at::Tensor& row_absmax,
                            const at::Tensor& col_absmax, const std::optional<at::Tensor>& bias,
                            at::ScalarType out_dtype) {
  TORCH_CHECK(acc.scalar_type() == at::kInt, "acc must be int32, got ", acc.scalar_type());
  TORCH_CHECK(acc.dim() >= 1, "acc must have at least one dimension, got a scalar");
  TORCH_CHECK(row_absmax.scalar_type() == at::kFloat, "row_absmax must be float32, got ",
              row_absmax.scalar_type());
  TORCH_CHECK(col_absmax.scalar_type() == at::kFloat, "col_absmax must be float32, got ",
              col_absmax.scalar_type());
  const int64_t n = acc.size(-1);
  TORCH_CHECK(row_absmax.sizes() == at::IntArrayRef(without_last_dim(acc)),
              "row_absmax must have shape ", at::IntArrayRef(without_last_dim(acc)),
              " (acc's leading dimensions), got ", row_absmax.sizes());
  TORCH_CHECK(col_absmax.dim() == 1 && col_absmax.size(0) == n, "col_absmax must have shape [",
              n, "] (acc's last dimension), got ", col_absmax.sizes());
  check_same_device(acc, "acc", row_absmax, "row_absmax");
  check_same_device(acc, "acc", col_absmax, "col_absmax");
  if (bias.has_value()) {
    check_float_input(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "bias must have shape [", n,
                "] (acc's last dimension), got ", bias->sizes());
    check_same_device(acc, "acc", *bias, "bias");
  }
  TORCH_CHECK(out_dtype == at::kHalf || out_dtype == at::kBFloat16 || out_dtype == at::kFloat,
              "out_dtype must be float16, bfloat16 or float32, got ", out_dtype);
}

void check_int8_weight_operands(const at::Tensor& x, const at::Tensor& weight_int8,
                                const at::Tensor& weight_absmax,
                                const std::optional<at::Tensor>& bias) {
  check_float_input(x, "x");
  check_int8_input(weight_int8, "weight_int8");
  TORCH_CHECK(weight_int8.dim() == 2, "weight_int8 must be 2D [N, K], got ", weight_int8.dim(), "D");
  TORCH_CHECK(x.size(-1) == weight_int8.size(1), "x's last dimension (K = ", x.size(-1),
              ") must equal weight_int8's second dimension (", weight_int8.size(1), ")");
  TORCH_CHECK(weight_absmax.scalar_type() == at::kFloat, "weight_absmax must be float32, got ",
              weight_absmax.scalar_type());
  TORCH_CHECK(weight_absmax.dim() == 1 && weight_absmax.size(0) == weight_int8.size(0),
              "weight_absmax must have shape [", weight_int8.size(0), "], got ", weight_absmax.sizes());
  check_same_device(x, "x", weight_int8, "weight_int8");
  check_same_device(x, "x", weight_absmax, "weight_absmax");
  if (bias.has_value()) {
    check_float_input(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight_int8.size(0), "bias must have shape [",
                weight_int8.size(0), "], got ", bias->sizes());
    check_same_device(x, "x", *bias, "bias");
  }
}

void check_int8_linear_arguments(const at::Tensor& x, const at::Tensor& weight_int8, const at::Tensor& weight_absmax,
                                 const std::optional<at::Tensor>& bias, double threshold, int64_t capacity) {
  check_int8_weight_operands(x, weight_int8, weight_absmax, bias);
  check_outlier_arguments(threshold, capacity);
}

int64_t leading_rows(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

std::vector<int64_t> with_last_dim(const at::Tensor& t, int64_t last) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape.back() = last;
  return shape;
}

std::vector<int64_t> without_last_dim(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - 1);
}

}  // namespace llmint8
