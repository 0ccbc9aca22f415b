// What launches ask of a GPU (SM count, compute capability, one full wave of a kernel, the code a
// kernel was built as), each answer read from the driver once and kept.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmint8 {

// The properties the kernels' launch rules use. The driver query costs host time on every call
// otherwise (several times per layer call on the Hopper paths).
struct DeviceFacts {
  int multiprocessors = 0;
  int major = 0, minor = 0;  // compute capability
  int64_t l2_bytes = 0;
};

// Facts of CUDA device `device`, queried on first use and cached.
const DeviceFacts& device_facts(int device);

// Blocks of `kernel` (at `threads` per block and `shared_bytes` of dynamic shared memory) resident
// on the current device at once, at least one per SM. The occupancy query costs host time, more
// than a small launch, so each answer is kept per kernel, device and launch shape.
int64_t resident_blocks(const void* kernel, int threads, size_t shared_bytes = 0);

// The virtual architecture (major * 10 + minor) whose PTX `kernel`'s code on the current device
// was compiled from: 80 for code JIT-compiled from compute_80 PTX even on a 9.0 device, so code
// under `__CUDA_ARCH__ >= 900` is in the kernel exactly when this is >= 90. Kept per kernel and device.
int kernel_ptx_version(const void* kernel);

}  // namespace llmint8
