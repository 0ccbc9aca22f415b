// Programmatic dependent launch (compute capability 9.0) from inside our kernels.
#pragma once

namespace llmint8 {

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
