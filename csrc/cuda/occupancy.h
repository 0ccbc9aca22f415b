// How many blocks of a kernel the current GPU runs at once: the size of one full wave.
#pragma once

#include <cstdint>

namespace llmint8 {

// Blocks of `kernel` (at `threads` per block) resident on the current device at once, at least
// one per SM. The occupancy query costs host time, more than a small launch, so each answer is
// kept per kernel and device.
int64_t resident_blocks(const void* kernel, int threads);

}  // namespace llmint8
