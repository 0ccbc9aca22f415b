// Argument validation shared by every device's kernels, so errors read the same on CPU and CUDA.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

namespace llmint8 {

void check_float_input(const at::Tensor& t, const char* name);
void check_int8_input(const at::Tensor& t, const char* name);
void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                       const char* b_name);
void check_threshold(double threshold);
// threshold (as above) and the outlier capacity (>= 0) of outlier_split and int8_linear.
void check_outlier_arguments(double threshold, int64_t capacity);
void check_outlier_cols(const std::optional<at::Tensor>& outlier_cols, const at::Tensor& x);
void check_matmul_operands(const at::Tensor& a, const at::Tensor& b);
void check_dequant_operands(const at::Tensor& acc, const at::Tensor& row_absmax,
                            const at::Tensor& col_absmax, const std::optional<at::Tensor>& bias,
                            at::ScalarType out_dtype);
void check_int8_weight_operands(const at::Tensor& x, const at::Tensor& weight_int8,
                                const at::Tensor& weight_absmax,
                                const std::optional<at::Tensor>& bias);
// check_int8_weight_operands and check_outlier_arguments: the int8_linear and llm_int8_linear ops.
void check_int8_linear_arguments(const at::Tensor& x, const at::Tensor& weight_int8, const at::Tensor& weight_absmax,
                                 const std::optional<at::Tensor>& bias, double threshold, int64_t capacity);

// Rows of a [*, K] tensor viewed as 2D: the product of the leading dimensions.
int64_t leading_rows(const at::Tensor& t);
// Shape of t with its last dimension replaced.
std::vector<int64_t> with_last_dim(const at::Tensor& t, int64_t last);
// Shape of t without its last dimension.
std::vector<int64_t> without_last_dim(const at::Tensor& t);

}  // namespace llmint8
