// int8 x int8 -> int32 matrix product on CUDA through cuBLASLt, with cached plans.
//
// cuBLASLt is column-major. Row-major a [M, K] and b [N, K] are column-major [K, M] and [K, N],
// so c^T [N, M] (column-major, which is row-major c [M, N]) = op_T(b) @ op_N(a): the "TN" layout
// that the int8 tensor-core kernels require.
#include "int8_matmul_cublaslt.h"

#include "../reference.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "../checks.h"

namespace llmint8 {
namespace {

// cuBLASLt's int8 kernels need K (the leading dimension of both operands) a multiple of 4.
constexpr int64_t kInt8LeadingDimMultiple = 4;
// Hopper's fastest int8 kernels ask for up to 32 MiB of workspace; the caching allocator
// hands it out stream-ordered, so capture in CUDA graphs is unaffected.
constexpr size_t kWorkspaceBytes = 32u << 20;

void check_cublas(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "llmint8: cuBLASLt ", what, " failed: ",
              cublasLtGetStatusString(status), " (", static_cast<int>(status), ")");
}

cublasLtHandle_t handle_for_device(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::map<c10::DeviceIndex, cublasLtHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = handles.find(device);
  if (found != handles.end()) return found->second;
  cublasLtHandle_t handle;
  check_cublas(cublasLtCreate(&handle), "handle creation");
  handles.emplace(device, handle);
  return handle;
}

// Largest power of two (up to 16) dividing the address: cuBLASLt picks kernels by alignment.
int pointer_alignment(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  int alignment = 16;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// Descriptors and the chosen algorithm for one problem: built once, reused on every call.
struct MatmulPlan {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t b_layout = nullptr, a_layout = nullptr, c_layout = nullptr;
  cublasLtMatmulAlgo_t algorithm{};

  ~MatmulPlan() {
    if (c_layout) cublasLtMatrixLayoutDestroy(c_layout);
    if (a_layout) cublasLtMatrixLayoutDestroy(a_layout);
    if (b_layout) cublasLtMatrixLayoutDestroy(b_layout);
    if (operation) cublasLtMatmulDescDestroy(operation);
  }
};

using PlanKey = std::tuple<c10::DeviceIndex, int64_t, int64_t, int64_t, std::array<int, 3>>;

void set_matmul_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                          cublasOperation_t value) {
  check_cublas(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)),
               "matmul descriptor attribute");
}

void set_alignment_preference(cublasLtMatmulPreference_t preference,
                              cublasLtMatmulPreferenceAttributes_t attribute, uint32_t bytes) {
  check_cublas(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)),
               "alignment preference");
}

std::unique_ptr<MatmulPlan> build_plan(cublasLtHandle_t handle, int64_t m, int64_t n, int64_t k,
                                       const std::array<int, 3>& alignments) {
  auto plan = std::make_unique<MatmulPlan>();
  check_cublas(cublasLtMatmulDescCreate(&plan->operation, CUBLAS_COMPUTE_32I, CUDA_R_32I),
               "matmul descriptor creation");
  set_matmul_attribute(plan->operation, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  set_matmul_attribute(plan->operation, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  check_cublas(cublasLtMatrixLayoutCreate(&plan->b_layout, CUDA_R_8I, k, n, k), "layout of b");
  check_cublas(cublasLtMatrixLayoutCreate(&plan->a_layout, CUDA_R_8I, k, m, k), "layout of a");
  check_cublas(cublasLtMatrixLayoutCreate(&plan->c_layout, CUDA_R_32I, n, m, n), "layout of c");

  cublasLtMatmulPreference_t preference;
  check_cublas(cublasLtMatmulPreferenceCreate(&preference), "preference creation");
  const size_t workspace = kWorkspaceBytes;
  check_cublas(cublasLtMatmulPreferenceSetAttribute(preference,
                                                    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &workspace, sizeof(workspace)),
               "workspace preference");
  set_alignment_preference(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignments[0]);
  set_alignment_preference(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignments[1]);
  set_alignment_preference(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignments[2]);
  set_alignment_preference(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignments[2]);

  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const auto status = cublasLtMatmulAlgoGetHeuristic(handle, plan->operation, plan->b_layout,
                                                     plan->a_layout, plan->c_layout,
                                                     plan->c_layout, preference, 1, &heuristic,
                                                     &found);
  cublasLtMatmulPreferenceDestroy(preference);
  check_cublas(status, "algorithm heuristic");
  TORCH_CHECK(found > 0, "llmint8: cuBLASLt has no int8 algorithm for M=", m, ", N=", n,
              ", K=", k, " on this GPU");
  plan->algorithm = heuristic.algo;
  return plan;
}

const MatmulPlan& plan_for(cublasLtHandle_t handle, const PlanKey& key) {
  static std::mutex mutex;
  static std::map<PlanKey, std::unique_ptr<MatmulPlan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[key];
  if (!plan) {
    plan = build_plan(handle, std::get<1>(key), std::get<2>(key), std::get<3>(key),
                      std::get<4>(key));
  }
  return *plan;
}

}  // namespace

at::Tensor int8_matmul_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_matmul_operands(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t m = leading_rows(a), n = b.size(0), k = b.size(1);
  auto c = at::empty(with_last_dim(a, n), a.options().dtype(at::kInt));
  if (m == 0 || n == 0) return c;
  if (k == 0) return c.zero_();

  const auto a2d = zero_pad_columns(a.contiguous().view({m, k}), kInt8LeadingDimMultiple);
  const auto b2d = zero_pad_columns(b.contiguous(), kInt8LeadingDimMultiple);
  const int64_t padded_k = a2d.size(1);
  const std::array<int, 3> alignments{pointer_alignment(b2d.const_data_ptr()),
                                      pointer_alignment(a2d.const_data_ptr()),
                                      pointer_alignment(c.const_data_ptr())};
  const auto handle = handle_for_device(a.device().index());
  const auto& plan = plan_for(handle, PlanKey{a.device().index(), m, n, padded_k, alignments});
  auto workspace = at::empty({static_cast<int64_t>(kWorkspaceBytes)}, a.options().dtype(at::kByte));
  const int32_t alpha = 1, beta = 0;
  check_cublas(cublasLtMatmul(handle, plan.operation, &alpha, b2d.const_data_ptr(), plan.b_layout,
                              a2d.const_data_ptr(), plan.a_layout, &beta, c.data_ptr(),
                              plan.c_layout, c.data_ptr(), plan.c_layout, &plan.algorithm,
                              workspace.data_ptr(), kWorkspaceBytes,
                              c10::cuda::getCurrentCUDAStream(a.device().index()).stream()),
               "int8 matmul");
  return c;
}

}  // namespace llmint8
