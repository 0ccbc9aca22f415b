// One full wave of a kernel's blocks, cached per kernel and device (see occupancy.h).
#include "occupancy.h"

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

namespace llmint8 {

int64_t resident_blocks(const void* kernel, int threads) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int64_t> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  if (const auto hit = cache.find(key); hit != cache.end()) return hit->second;
  int sms = 0, blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, 0));
  return cache[key] = int64_t(sms) * std::max(blocks_per_sm, 1);
}

}  // namespace llmint8
