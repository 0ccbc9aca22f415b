// Every llmint8 operator schema, declared once; each device registers its kernels in its own file.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing llmint8._C runs the static registrations below; the module itself holds nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(llmint8, m) {
  // Columns of x [*, K] holding any |value| >= threshold (threshold 0: none). Fixed-size outputs
  // keep the forward free of host synchronization: outlier_cols int32 [capacity] (ascending, -1
  // padded), count int32 [] (all such columns, may exceed capacity), x_outliers [*, capacity]
  // (those columns of x, zero in padded slots).
  m.def("outlier_split(Tensor x, float threshold, int capacity) -> (Tensor outlier_cols, Tensor count, Tensor x_outliers)");
  // x [*, K] -> int8 [*, K] and fp32 absmax per row over the columns not in outlier_cols
  // (which are written as 0).
  m.def("quantize_rowwise(Tensor x, Tensor? outlier_cols=None) -> (Tensor q, Tensor row_absmax)");
  // Weight W [N, K] -> int8 [N, K] and fp32 absmax per output channel [N].
  m.def("quantize_colwise(Tensor weight) -> (Tensor q, Tensor col_absmax)");
  // a int8 [*, K], b int8 [N, K] -> int32 [*, N] = a @ b^T, exact.
  m.def("int8_matmul(Tensor a, Tensor b) -> Tensor");
  // acc int32 [*, N] -> acc * (row_absmax ⊗ col_absmax) / 127^2 + bias, computed in fp32,
  // returned in out_dtype (float16, bfloat16 or float32).
  // The LLM.int8 layer in one call (the five ops' composition, with the dequantization, bias and
  // 16-bit outlier product fused into one epilogue): x [*, K] @ W^T + bias in x's dtype.
  m.def("int8_linear(Tensor x, Tensor weight_int8, Tensor weight_absmax, Tensor? bias, float threshold, int capacity) -> Tensor");
  // Fast path beside the five ops: x [*, K] (16-bit or fp32) times the int8 weight, without
  // quantizing x: (x @ weight_int8^T) * weight_absmax / 127 + bias, accumulated in fp32, in x's
  // dtype. Strictly more accurate than the LLM.int8 decomposition; used for small batches.
  m.def("int8_weight_linear(Tensor x, Tensor weight_int8, Tensor weight_absmax, Tensor? bias) -> Tensor");
  // An int8 layer's forward, the fastest path with LLM.int8 accuracy or better: int8_weight_linear
  // for small batches (see forward_rule.h; exact_decomposition: never), else int8_linear.
  m.def("llm_int8_linear(Tensor x, Tensor weight_int8, Tensor weight_absmax, Tensor? bias, float threshold, int capacity, bool exact_decomposition) -> Tensor");
  m.def("dequant_outer(Tensor acc, Tensor row_absmax, Tensor col_absmax, Tensor? bias, ScalarType out_dtype) -> Tensor");
}
