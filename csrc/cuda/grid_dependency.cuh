// Programmatic dependent launch (compute capability 9.0): the launch attribute and the kernels' side.
#pragma once

#include <cuda_runtime.h>

namespace llmint8 {

// The host side: the launch attribute that lets a grid start while the one before it drains.
inline cudaLaunchAttribute overlapping_previous_grid() {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  return attribute;
}

// A grid launched with programmatic stream serialization may start while the grid before it
// drains, up to griddepcontrol.wait, which returns once that grid has finished and its writes are
// visible. A grid that lets the next one launch early loses nothing by it: the next grid starts
// only once every block of this one has started, and waits the same way before it reads anything
// this one writes. Without compute capability 9.0 code both are no-ops, and the next grid starts
// after this one as usual.
__device__ __forceinline__ void let_next_grid_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace llmint8
