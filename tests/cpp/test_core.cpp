// Catch2 tests of the torch-free LLM.int8 core (csrc/core/llmint8_core.h), exact expectations only.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/llmint8_core.h"
#include "core/outlier_layout.h"

using llmint8::compact_outlier_columns;
using llmint8::dequantize_value;
using llmint8::inverse_step;
using llmint8::mark_outlier_columns;
using llmint8::OutlierLayout;
using llmint8::quantize_row;
using llmint8::quantize_value;

TEST_CASE("quantize_value rounds half to even and clamps to [-127, 127]") {
  const float unit = inverse_step(127.0f);  // step 1: the value itself is rounded
  CHECK(unit == 1.0f);
  CHECK(quantize_value(0.5f, unit) == 0);
  CHECK(quantize_value(1.5f, unit) == 2);
  CHECK(quantize_value(2.5f, unit) == 2);
  CHECK(quantize_value(-2.5f, unit) == -2);
  CHECK(quantize_value(126.7f, unit) == 127);
  CHECK(quantize_value(1000.0f, unit) == 127);
  CHECK(quantize_value(-1000.0f, unit) == -127);
  CHECK(quantize_value(std::numeric_limits<float>::quiet_NaN(), unit) == 0);
}

TEST_CASE("an all-zero row has absmax 0 and quantizes to zeros") {
  const std::vector<float> row(5, 0.0f);
  std::vector<int8_t> q(5, 99);
  CHECK(quantize_row(row.data(), 5, nullptr, q.data()) == 0.0f);
  CHECK(q == std::vector<int8_t>(5, 0));
  CHECK(inverse_step(0.0f) == 0.0f);
}

TEST_CASE("quantize_row skips excluded columns for the absmax and writes them as 0") {
  const std::vector<float> row{1.0f, -50.0f, 0.5f, -2.0f};
  const std::vector<uint8_t> excluded{0, 1, 0, 0};
  std::vector<int8_t> q(4);
  CHECK(quantize_row(row.data(), 4, excluded.data(), q.data()) == 2.0f);
  CHECK(q == std::vector<int8_t>{64, 0, 32, -127});  // 63.5 -> 64 (even), 31.75 -> 32
}

TEST_CASE("quantized values stay within half a step of the exact scaled value") {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> row(172);
  for (auto& v : row) v = normal(rng);
  std::vector<int8_t> q(row.size());
  const float absmax = quantize_row(row.data(), row.size(), nullptr, q.data());
  for (size_t c = 0; c < row.size(); ++c) {
    const double exact = double(row[c]) * 127.0 / double(absmax);
    CHECK(std::abs(q[c] - exact) <= 0.5 + 1e-4);
  }
}

TEST_CASE("outlier columns are marked and compacted in ascending order") {
  // rows x cols = 3 x 6, outliers (|v| >= 6) in columns 1 and 4; threshold is inclusive.
  const std::vector<float> x{0, 7, 0, 0, 0, 0,  //
                             0, 0, 0, 0, -6, 0,  //
                             0, 1, 5.99f, 0, 0, 0};
  std::vector<uint8_t> marks(6, 0);
  mark_outlier_columns(x.data(), 3, 6, 6.0f, marks.data());
  CHECK(marks == std::vector<uint8_t>{0, 1, 0, 0, 1, 0});

  std::vector<int32_t> cols(4);
  CHECK(compact_outlier_columns(marks.data(), 6, 4, cols.data()) == 2);
  CHECK(cols == std::vector<int32_t>{1, 4, -1, -1});

  std::vector<int32_t> one(1);
  CHECK(compact_outlier_columns(marks.data(), 6, 1, one.data()) == 2);  // count beyond capacity
  CHECK(one == std::vector<int32_t>{1});
}

TEST_CASE("threshold 0 marks no outliers") {
  const std::vector<float> x{100.0f, -100.0f};
  std::vector<uint8_t> marks(2, 0);
  mark_outlier_columns(x.data(), 1, 2, 0.0f, marks.data());
  CHECK(marks == std::vector<uint8_t>{0, 0});
}

TEST_CASE("dequantize_value applies the outer product of scales over 127^2 plus bias") {
  CHECK(dequantize_value(16129, 1.0f, 1.0f, 0.0f) == Approx(1.0f).epsilon(1e-7));
  CHECK(dequantize_value(-16129, 2.0f, 3.0f, 0.5f) == Approx(-5.5f).epsilon(1e-7));
  CHECK(dequantize_value(0, 7.0f, 7.0f, -1.0f) == -1.0f);
}

TEST_CASE("row-major outlier operands are [rows, capacity] and [capacity, N]") {
  const auto layout = OutlierLayout::row_major(5, 7);
  CHECK_FALSE(layout.is_fragment_order());
  CHECK(layout.stored_slots() == 5);
  CHECK(layout.x_index(3, 4) == 3 * 5 + 4);
  CHECK(layout.w_index(4, 6) == 4 * 7 + 6);
  CHECK(layout.x_elements(3) == 15);
  CHECK(layout.w_elements() == 35);
}

// The PTX ISA's mma.m16n8k16 16-bit fragments: lane 4 g + t holds A elements i = 0..7 at row
// g + 8 ((i / 2) % 2), column 2 t + i % 2 + 8 (i / 4), and B elements i = 0..3 at row (slot)
// 2 t + i % 2 + 8 (i / 2), column g.
TEST_CASE("fragment order puts each element where mma.sync's fragments hold it") {
  const OutlierLayout layout{20, 12, 3, 2};  // 2 chunks, 48 rows, 16 columns
  REQUIRE(layout.chunks() == 2);
  REQUIRE(layout.stored_slots() == 32);
  for (int chunk = 0; chunk < 2; ++chunk) {
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int row_block = 0; row_block < 3; ++row_block) {
        for (int i = 0; i < 8; ++i) {
          const int64_t row = row_block * 16 + g + 8 * ((i / 2) % 2), slot = chunk * 16 + 2 * t + i % 2 + 8 * (i / 4);
          CHECK(layout.x_index(row, slot) == (chunk * 3 + row_block) * 256 + lane * 8 + i);
        }
      }
      for (int col_block = 0; col_block < 2; ++col_block) {
        for (int i = 0; i < 4; ++i) {
          const int64_t n = col_block * 8 + g, slot = chunk * 16 + 2 * t + i % 2 + 8 * (i / 2);
          CHECK(layout.w_index(slot, n) == (chunk * 2 + col_block) * 128 + lane * 4 + i);
        }
      }
    }
  }
}

TEST_CASE("fragment order fills its buffers exactly once") {
  const OutlierLayout layout{40, 24, 16, 32};  // 3 chunks, 256 rows, 256 columns
  std::vector<int> x_hits(layout.x_elements(256)), w_hits(layout.w_elements());
  for (int64_t slot = 0; slot < layout.stored_slots(); ++slot) {
    for (int64_t row = 0; row < 256; ++row) ++x_hits.at(layout.x_index(row, slot));
    for (int64_t n = 0; n < 256; ++n) ++w_hits.at(layout.w_index(slot, n));
  }
  CHECK(std::count(x_hits.begin(), x_hits.end(), 1) == static_cast<int64_t>(x_hits.size()));
  CHECK(std::count(w_hits.begin(), w_hits.end(), 1) == static_cast<int64_t>(w_hits.size()));
}

TEST_CASE("w_position walks the weight's columns in storage order") {
  for (const auto& layout : {OutlierLayout{40, 24, 16, 32}, OutlierLayout::row_major(5, 7)}) {
    for (int64_t index = 0; index < layout.w_elements(); ++index) {
      const auto at = layout.w_position(index);
      CHECK(layout.w_index(at.slot, at.n) == index);
    }
  }
  const OutlierLayout layout{40, 24, 16, 32};
  CHECK(layout.written_slots(0) == 16);  // one chunk of zeros: the epilogue always multiplies one
  CHECK(layout.written_slots(17) == 32);
  CHECK(layout.w_written_elements(17) == 2 * 32 * 128);
  CHECK(OutlierLayout::row_major(5, 7).written_slots(2) == 5);
}
