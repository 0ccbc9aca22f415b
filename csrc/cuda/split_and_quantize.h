// LLM.int8's activation side in one cooperative launch: find x's outlier columns, split them off,
// quantize the rest row-wise and gather the weight's outlier columns.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "../core/outlier_layout.h"

namespace llmint8 {

// The activation side of int8_linear: x quantized row-wise with its outlier columns split off.
// Without a split (threshold 0 or capacity 0) the outlier tensors are undefined.
struct QuantizedActivations {
  at::Tensor x_int8;         // int8, x's shape
  at::Tensor x_absmax;       // fp32 [*], per row over the columns not split off
  at::Tensor outlier_cols;   // int32 [capacity], ascending, -1 padded
  at::Tensor outlier_count;  // int32 [], may exceed capacity
  at::Tensor x_outliers;     // x's dtype, [*, capacity] laid out by outlier_layout, zero in padded slots
  at::Tensor w_cols;         // the weight's outlier columns [capacity, N], dequantized, laid out by
                             // outlier_layout, zero in padded slots
  OutlierLayout outlier_layout;

  bool has_outliers() const { return outlier_cols.defined(); }
};

// Whether one launch splits x [*, K] (contiguous, rows > 0, K > 0) with this capacity: its column
// masks and slot list must fit in a block's shared memory, and x in a third of the GPU's L2 (the
// column scan reads it twice).
bool split_and_quantize_applies(const at::Tensor& x, int64_t capacity);

// Fills a's tensors (allocated by the caller, outlier ones defined) from x (contiguous) with the
// same values as outlier_split, quantize_rowwise and the weight-column gather computed one after
// another: the outlier columns' slots, x_int8 and x_absmax over the kept columns, x_outliers and
// w_cols (in its own dtype) from weight [N, K] int8 and weight_scale [N].
void split_and_quantize(const at::Tensor& x, double threshold, const at::Tensor& weight,
                        const at::Tensor& weight_scale, QuantizedActivations& a);

}  // namespace llmint8
