// Device facts, one full wave of a kernel's blocks and a kernel's PTX version, cached per device
// and kernel (occupancy.h).
#include "occupancy.h"

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace llmint8 {

const DeviceFacts& device_facts(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto hit = cache.find(device); hit != cache.end()) return hit->second;
  DeviceFacts facts;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&facts.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&facts.major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&facts.minor, cudaDevAttrComputeCapabilityMinor, device));
  int l2_bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  facts.l2_bytes = l2_bytes;
  return cache[device] = facts;
}

int64_t resident_blocks(const void* kernel, int threads, size_t shared_bytes) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, size_t>, int64_t> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, device, threads, shared_bytes);
  if (const auto hit = cache.find(key); hit != cache.end()) return hit->second;
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, shared_bytes));
  return cache[key] = int64_t(device_facts(device).multiprocessors) * std::max(blocks_per_sm, 1);
}

int kernel_ptx_version(const void* kernel) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  if (const auto hit = cache.find(key); hit != cache.end()) return hit->second;
  cudaFuncAttributes attributes{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  return cache[key] = attributes.ptxVersion;
}

}  // namespace llmint8
