// What the CUTLASS sm90 GEMMs share: TMA operand rules, device queries and the launch sequence.
#pragma once

#if defined(LLMINT8_WITH_CUTLASS_SM90)

#include <cstdint>
#include <limits>
#include <mutex>
#include <unordered_set>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

// The kernels' producers wait for the previous grid (griddepcontrol.wait) before they read global
// memory, so that run_gemm may launch them to overlap it. CUTLASS_ENABLE_GDC_FOR_SM90, the switch
// meant for this, also compiles a stream-K scheduler call that CUTLASS 4.2 gets wrong (a const
// member bound to a non-const reference); the macro it sets, for sm_90a code only, is what the
// waits need. This header comes before any other CUTLASS include.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CUTLASS_GDC_ENABLED
#endif

// The collective builders, epilogue visitors and device adapter both GEMMs are made of.
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>
#include <cutlass/util/packed_stride.hpp>

#include "grid_dependency.cuh"
#include "occupancy.h"

namespace llmint8::sm90 {

// TMA needs 16-byte aligned base addresses and row strides.
constexpr int64_t kTmaAlignmentBytes = 16;
// Problem extents are int in CUTLASS's problem shape.
constexpr int64_t kMaxExtent = std::numeric_limits<int>::max();

inline bool is_tma_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kTmaAlignmentBytes == 0;
}

// A contiguous, TMA-aligned CUDA matrix of dtype.
inline bool is_tma_matrix(const at::Tensor& t, at::ScalarType dtype) {
  return t.is_cuda() && t.scalar_type() == dtype && t.dim() == 2 && t.is_contiguous() &&
         is_tma_aligned(t);
}

// GEMM extents both kernels take: positive, within int, and 16-byte TMA rows for a K-major int8
// operand (K % 16) and a 16-bit output with N contiguous elements per row or column (N % 8).
inline bool are_tma_extents(int64_t m, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0 || k <= 0) return false;
  if (k % kTmaAlignmentBytes != 0 || n % (kTmaAlignmentBytes / 2) != 0) return false;
  return m <= kMaxExtent && n <= kMaxExtent && k <= kMaxExtent;
}

// sm_90a code (wgmma, TMA) runs on compute capability 9.0 alone.
inline bool is_compute_capability_90(const at::Device& device) {
  const auto& facts = device_facts(device.index());
  return facts.major == 9 && facts.minor == 0;
}

inline cutlass::KernelHardwareInfo hardware_info(int device) {
  cutlass::KernelHardwareInfo info;
  info.device_id = device;
  info.sm_count = device_facts(device).multiprocessors;
  return info;
}

inline void check_on_device(const at::Tensor& t, const char* name, at::ScalarType dtype,
                            const at::Device& device) {
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// A per-row or per-column vector (fp32 unless said otherwise), read elementwise: no alignment
// needed beyond its element's.
inline void check_vector_operand(const at::Tensor& t, const char* name, const at::Device& device,
                                 int64_t length, at::ScalarType dtype = at::kFloat) {
  check_on_device(t, name, dtype, device);
  TORCH_CHECK(t.numel() == length, name, " must hold ", length, " values, got ", t.numel());
}

// A bias of `length` values in the output's dtype, read in 16-byte vectors.
inline void check_bias_operand(const at::Tensor& t, at::ScalarType dtype, const at::Device& device,
                               int64_t length) {
  check_vector_operand(t, "bias", device, length, dtype);
  TORCH_CHECK(is_tma_aligned(t), "bias must be ", kTmaAlignmentBytes, "-byte aligned");
}

// A [rows, cols] matrix that TMA reads or writes.
inline void check_matrix_operand(const at::Tensor& t, const char* name, at::ScalarType dtype,
                                 const at::Device& device, int64_t rows, int64_t cols) {
  check_on_device(t, name, dtype, device);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must be [", rows,
              ", ", cols, "], got ", t.sizes());
  TORCH_CHECK(is_tma_aligned(t), name, " must be ", kTmaAlignmentBytes, "-byte aligned");
}

inline void check_cutlass(cutlass::Status status, const char* gemm, const char* step) {
  TORCH_CHECK(status == cutlass::Status::kSuccess, "llmint8: CUTLASS ", gemm, " ", step,
              " failed: ", cutlassGetStatusString(status));
}

// Lets Kernel use its shared memory on `device`: once per kernel and device, as the setting lasts,
// where CUTLASS's adapter sets it on every call (a driver call of a few microseconds of host time).
template <class Kernel>
void allow_kernel_shared_memory(int device, const char* gemm) {
  static std::mutex mutex;
  static std::unordered_set<int> allowed;
  const std::lock_guard<std::mutex> lock(mutex);
  if (allowed.count(device)) return;
  if (Kernel::SharedStorageSize >= (48 << 10)) {
    const cudaError_t result = cudaFuncSetAttribute(cutlass::device_kernel<Kernel>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(Kernel::SharedStorageSize));
    TORCH_CHECK(result == cudaSuccess, "llmint8: CUTLASS ", gemm, " shared memory setting failed: ",
                cudaGetErrorString(result));
  }
  allowed.insert(device);
}

// Launches the kernel as the adapter's run() would, minus the cudaFuncSetAttribute that CUTLASS's
// cluster launcher makes on every launch (a permission for non-portable cluster sizes, which our
// clusters of at most 2 never need). The kernel's producers wait for the previous grid before
// they read global memory (see CUTLASS_GDC_ENABLED above), so it may start while that grid
// drains (grid_dependency.cuh).
template <class Gemm>
void launch_kernel(typename Gemm::Params& params, cudaStream_t stream, const char* name) {
  using Kernel = typename Gemm::GemmKernel;
  using ClusterShape = typename Kernel::DispatchPolicy::ClusterShape;
  cudaLaunchAttribute attributes[2];
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = cute::size<0>(ClusterShape{});
  attributes[0].val.clusterDim.y = cute::size<1>(ClusterShape{});
  attributes[0].val.clusterDim.z = cute::size<2>(ClusterShape{});
  attributes[1] = overlapping_previous_grid();
  cudaLaunchConfig_t config{};
  config.gridDim = Gemm::get_grid_shape(params);
  config.blockDim = Kernel::get_block_shape();
  config.dynamicSmemBytes = Kernel::SharedStorageSize;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = 2;
  void* kernel_params[] = {&params};
  const cudaError_t result =
      cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(cutlass::device_kernel<Kernel>), kernel_params);
  TORCH_CHECK(result == cudaSuccess, "llmint8: CUTLASS ", name, " launch failed: ", cudaGetErrorString(result));
}

// Checks, initializes and launches a CUTLASS device GEMM on the current stream: the adapter's
// initialize() step by step, with the shared-memory setting made once. Its workspace (stream-K
// partial sums) comes from the caching allocator, which keeps graph capture safe.
template <class Gemm>
void run_gemm(const typename Gemm::Arguments& arguments, const at::Device& device, const char* name) {
  using Kernel = typename Gemm::GemmKernel;
  check_cutlass(Gemm::can_implement(arguments), name, "can_implement");
  const auto workspace_bytes = static_cast<int64_t>(Gemm::get_workspace_size(arguments));
  at::Tensor workspace;
  if (workspace_bytes > 0) {
    workspace = at::empty({workspace_bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  }
  void* workspace_data = workspace.defined() ? workspace.data_ptr() : nullptr;
  const auto stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  check_cutlass(Kernel::initialize_workspace(arguments, workspace_data, stream, nullptr), name, "initialize");
  auto params = Kernel::to_underlying_arguments(arguments, workspace_data);
  allow_kernel_shared_memory<Kernel>(device.index(), name);
  launch_kernel<Gemm>(params, stream, name);
}

}  // namespace llmint8::sm90

#endif
