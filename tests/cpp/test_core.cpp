// Catch2 tests of the torch-free LLM.int8 core (csrc/core/llmint8_core.h), exact expectations only.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/llmint8_core.h"

using llmint8::compact_outlier_columns;
using llmint8::dequantize_value;
using llmint8::inverse_step;
using llmint8::mark_outlier_columns;
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
