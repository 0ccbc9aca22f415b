// Where int8_linear's outlier operands keep their elements: row-major, or in the mma fragment order
// that the Hopper GEMM's epilogue copies into shared memory as it stands (outlier_product_sm90.cuh).
#pragma once

#include <cstdint>

#include "llmint8_core.h"

namespace llmint8 {

// Fragment order serves mma.sync.m16n8k16: a 16-row block of x_outliers over 16 slots is the A
// operand, 32 lanes of four 32-bit registers; an 8-column block of the weight's outlier columns
// over 16 slots is the B operand, 32 lanes of two registers. Blocks are stored chunk by chunk of
// 16 slots, rows (columns) ascending within a chunk, so that a tile's rows (an epilogue subtile's
// columns) of one chunk are one contiguous run of bytes.
constexpr int kFragmentSlots = 16;
constexpr int kFragmentRows = 16;
constexpr int kFragmentCols = 8;
constexpr int kFragmentLanes = 32;
constexpr int kXFragmentElements = kFragmentRows * kFragmentSlots;  // 512 bytes of 16-bit values
constexpr int kWFragmentElements = kFragmentCols * kFragmentSlots;  // 256 bytes

// Chunks of kFragmentSlots that hold `slots` slots.
LLMINT8_HOST_DEVICE constexpr int64_t chunks_for(int64_t slots) { return blocks_for(slots, kFragmentSlots); }
// Chunks that fragment order's writers fill when `used` slots hold split columns: at least one,
// zeros when none is used, so that the Hopper epilogue always multiplies a defined chunk and its
// per-subtile code holds no separate path for a layer without outliers.
LLMINT8_HOST_DEVICE constexpr int64_t written_chunks(int64_t used) { return used > 0 ? chunks_for(used) : 1; }

// x_outliers (row, slot) and the weight's outlier columns (slot, n) as offsets into their
// buffers. Row-major: [rows, capacity] and [capacity, N]. Fragment order: row_blocks 16-row blocks
// and col_blocks 8-column blocks (both padded past the matrix to whole GEMM tiles, whose padding
// is never written and only reaches outputs that are never stored), and slots padded to whole
// chunks, which writers must fill with zeros like the unused slots below capacity.
struct OutlierLayout {
  int64_t capacity = 0;
  int64_t n_dim = 0;
  int64_t row_blocks = 0;  // 0: row-major
  int64_t col_blocks = 0;

  static OutlierLayout row_major(int64_t capacity, int64_t n_dim) { return {capacity, n_dim, 0, 0}; }

  LLMINT8_HOST_DEVICE bool is_fragment_order() const { return row_blocks > 0; }
  LLMINT8_HOST_DEVICE int64_t chunks() const { return chunks_for(capacity); }
  // Slots each row of x_outliers and each weight column has in memory.
  LLMINT8_HOST_DEVICE int64_t stored_slots() const {
    return is_fragment_order() ? chunks() * kFragmentSlots : capacity;
  }
  LLMINT8_HOST_DEVICE int64_t x_elements(int64_t rows) const {
    return is_fragment_order() ? chunks() * row_blocks * kXFragmentElements : rows * capacity;
  }
  LLMINT8_HOST_DEVICE int64_t w_elements() const {
    return is_fragment_order() ? chunks() * col_blocks * kWFragmentElements : capacity * n_dim;
  }

  // Slots that must hold values or zeros when `split` columns are used: fragment order needs only
  // written_chunks (the epilogue reads no further), row-major keeps every slot defined.
  LLMINT8_HOST_DEVICE int64_t written_slots(int64_t split) const {
    if (!is_fragment_order()) return capacity;
    return written_chunks(split) * kFragmentSlots;
  }
  // Elements of the weight's columns that hold written_slots(split) slots: a prefix of the buffer.
  LLMINT8_HOST_DEVICE int64_t w_written_elements(int64_t split) const {
    return is_fragment_order() ? written_chunks(split) * col_blocks * kWFragmentElements
                               : capacity * n_dim;
  }

  struct Position {
    int64_t slot, n;
  };
  // The inverse of w_index, so that writers can walk the buffer in order (n may be past the matrix).
  LLMINT8_HOST_DEVICE Position w_position(int64_t index) const {
    if (!is_fragment_order()) return {index / n_dim, index % n_dim};
    const int64_t block = index / kWFragmentElements, within = index % kWFragmentElements;
    const int64_t lane = within / 4, reg = within / 2 % 2;
    return {block / col_blocks * kFragmentSlots + lane % 4 * 2 + within % 2 + 8 * reg,
            block % col_blocks * kFragmentCols + lane / 4};
  }

  // A fragment register holds slots 2p and 2p + 1 of one row (column), the first in its low half.
  // A: lane 4 (row % 8) + p % 4, register row % 16 / 8 + 2 (p / 4). B: lane 4 (n % 8) + p % 4,
  // register p / 4.
  LLMINT8_HOST_DEVICE int64_t x_index(int64_t row, int64_t slot) const {
    if (!is_fragment_order()) return row * capacity + slot;
    const int64_t pair = slot % kFragmentSlots / 2, r = row % kFragmentRows;
    const int64_t lane = r % 8 * 4 + pair % 4, reg = r / 8 + 2 * (pair / 4);
    const int64_t block = slot / kFragmentSlots * row_blocks + row / kFragmentRows;
    return block * kXFragmentElements + (lane * 4 + reg) * 2 + slot % 2;
  }
  LLMINT8_HOST_DEVICE int64_t w_index(int64_t slot, int64_t n) const {
    if (!is_fragment_order()) return slot * n_dim + n;
    const int64_t pair = slot % kFragmentSlots / 2;
    const int64_t lane = n % kFragmentCols * 4 + pair % 4, reg = pair / 4;
    const int64_t block = slot / kFragmentSlots * col_blocks + n / kFragmentCols;
    return block * kWFragmentElements + (lane * 2 + reg) * 2 + slot % 2;
  }
};

}  // namespace llmint8
