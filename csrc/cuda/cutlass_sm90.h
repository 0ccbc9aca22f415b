// What the CUTLASS sm90 GEMMs share: TMA operand rules, device queries and the launch sequence.
#pragma once

#if defined(LLMINT8_WITH_CUTLASS_SM90)

#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

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

namespace llmint8::sm90 {

// TMA needs 16-byte aligned base addresses and row strides.
constexpr int64_t kTmaAlignmentBytes = 16;
// Problem extents are int in CUTLASS's problem shape.
constexpr int64_t kMaxExtent = std::numeric_limits<int>::max();

inline bool is_tma_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kTmaAlignmentBytes == 0;
}

inline int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// sm_90a code (wgmma, TMA) runs on compute capability 9.0 alone.
inline bool is_compute_capability_90(const at::Device& device) {
  return device_attribute(cudaDevAttrComputeCapabilityMajor, device.index()) == 9 &&
         device_attribute(cudaDevAttrComputeCapabilityMinor, device.index()) == 0;
}

inline cutlass::KernelHardwareInfo hardware_info(int device) {
  cutlass::KernelHardwareInfo info;
  info.device_id = device;
  info.sm_count = device_attribute(cudaDevAttrMultiProcessorCount, device);
  return info;
}

inline void check_cutlass(cutlass::Status status, const char* gemm, const char* step) {
  TORCH_CHECK(status == cutlass::Status::kSuccess, "llmint8: CUTLASS ", gemm, " ", step,
              " failed: ", cutlassGetStatusString(status));
}

// Checks, initializes and launches a CUTLASS device GEMM on the current stream. Its workspace
// (stream-K partial sums) comes from the caching allocator, which keeps graph capture safe.
template <class Gemm>
void run_gemm(const typename Gemm::Arguments& arguments, const at::Device& device, const char* name) {
  Gemm gemm;
  check_cutlass(gemm.can_implement(arguments), name, "can_implement");
  const auto workspace = at::empty({static_cast<int64_t>(Gemm::get_workspace_size(arguments))},
                                   at::TensorOptions().dtype(at::kByte).device(device));
  const auto stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  check_cutlass(gemm.initialize(arguments, workspace.data_ptr(), stream), name, "initialize");
  check_cutlass(gemm.run(stream), name, "launch");
}

}  // namespace llmint8::sm90

#endif
