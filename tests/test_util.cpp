#include "test_util.h"

#include "core/error.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace dl::test {

const io::SafetensorsFile& core_fixtures() {
  static const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/core_ops.safetensors");
  return f;
}

Tensor fx(const std::string& case_name, const std::string& name) {
  const auto& t = core_fixtures().tensors;
  auto it = t.find(case_name + "/" + name);
  if (it == t.end()) throw std::runtime_error("fixture tensor " + case_name + "/" + name + " is missing");
  return it->second;
}

static ::testing::AssertionResult compare(const Tensor& actual, const Tensor& expected, float rtol, float atol) {
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << actual.describe() << " vs expected " << expected.describe();
  auto a = actual.to_vector(), e = expected.to_vector();
  double worst = 0;
  size_t wi = 0;
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(double(a[i]) - double(e[i]));
    const bool both_inf = std::isinf(a[i]) && std::isinf(e[i]) && (a[i] > 0) == (e[i] > 0);
    if (both_inf) continue;
    const double excess = diff - (atol + rtol * std::fabs(double(e[i])));
    if (!(excess <= 0)) {
      ++bad;
      if (!(excess <= worst)) {
        worst = std::isnan(excess) ? INFINITY : excess;
        wi = i;
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << a.size() << " elements differ; worst at flat index " << wi
                                       << ": " << a[wi] << " vs expected " << e[wi] << " (rtol " << rtol << ", atol "
                                       << atol << ")";
}

::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, float rtol, float atol) {
  return compare(actual, expected, rtol, atol);
}

::testing::AssertionResult close_rel(const Tensor& actual, const Tensor& expected, float rel) {
  float m = 0;
  for (float v : expected.to_vector())
    if (std::isfinite(v)) m = std::max(m, std::fabs(v));
  return compare(actual, expected, rel, rel * std::max(m, 1e-6f));
}

::testing::AssertionResult bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype())
    return ::testing::AssertionFailure() << a.describe() << " vs " << b.describe();
  Tensor ac = a.contiguous(), bc = b.contiguous();
  if (std::memcmp(ac.raw(), bc.raw(), ac.nbytes()) != 0) {
    auto av = ac.to_vector(), bv = bc.to_vector();
    for (size_t i = 0; i < av.size(); ++i)
      if (std::memcmp(&av[i], &bv[i], 4) != 0)
        return ::testing::AssertionFailure() << "first difference at flat index " << i << ": " << av[i] << " vs "
                                             << bv[i];
  }
  return ::testing::AssertionSuccess();
}

Tensor randn(const Shape& shape, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = nd(rng);
  return t;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

#ifdef DL_CLI
CliResult cli(const std::string& args, const std::string& stdin_text, const std::string& shell_prefix) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("dl_cli_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string out = (dir / "stdout").string(), err = (dir / "stderr").string(), in = (dir / "stdin").string();
  std::ofstream(in) << stdin_text;
  const std::string cmd = shell_prefix + std::string(DL_CLI) + " " + args + " < " + in + " > " + out + " 2> " + err;
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}
#endif

}  // namespace dl::test
