// Shared helpers for the test suite: fixture access and tolerant comparison.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace dl::test {

// Tensors of tests/fixtures/core_ops.safetensors, loaded once.
const io::SafetensorsFile& core_fixtures();
// Fixture tensor "<case>/<name>"; fails the test (throws) when absent.
Tensor fx(const std::string& case_name, const std::string& name);

// Elementwise |a - e| <= atol + rtol * |e| over equal shapes; reports the worst element.
::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, float rtol = 1e-4f,
                                     float atol = 1e-5f);
// Same, with atol scaled to the largest magnitude in `expected` (relative error of the tensor as a whole).
::testing::AssertionResult close_rel(const Tensor& actual, const Tensor& expected, float rel = 1e-4f);
// Bit-identical values.
::testing::AssertionResult bit_equal(const Tensor& a, const Tensor& b);

Tensor randn(const Shape& shape, uint64_t seed, float scale = 1.f);

// The message of the dl::Error that fn throws, or "no error".
std::string error_of(const std::function<void()>& fn);

struct CliResult {
  int code = -1;
  std::string out, err;
};
// Runs the dreamllm binary with `args` (a shell word list, optionally prefixed by the caller with shell commands
// through `shell_prefix`, e.g. "ulimit -f 64;"), capturing stdout and stderr.
CliResult cli(const std::string& args, const std::string& stdin_text = "", const std::string& shell_prefix = "");
std::string slurp(const std::string& path);

}  // namespace dl::test
