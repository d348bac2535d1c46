// Numeric options are parsed strictly by every command: NaN and infinities, integers past 64 bits and negative
// values for unsigned or non-negative options are bad usage (exit 2, naming the option), where CLI11 alone let NaN
// through its range checks, clamped 2^70 to 2^63 - 1 and read -1 as 2^64 - 1. Each case names a value that no
// command may accept; the model is never loaded (usage is checked first), so these are fast.
#include <string>
#include <vector>

#include "test_util.h"

namespace dl {
namespace {

const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";
const std::string kImage = std::string(DL_FIXTURE_DIR) + "/images/files/rgb.png";

struct BadOption {
  std::string args;     // a command line with one bad value
  std::string message;  // what the error must say
};

TEST(CliOptions, BadNumbersAreUsageErrorsNamingTheOption) {
  const std::string ask = "ask -m " + kModel + " -i " + kImage + " -p q ";
  const std::string create = "create -m " + kModel + " -p x -o /tmp/never.png ";
  const std::string train = "train -m " + kModel + " --data x.jsonl -o /tmp/never ";
  const std::vector<BadOption> cases = {
      {ask + "--temp nan", "--temp: 'nan' is not a finite number"},
      {ask + "--top-p NaN", "--top-p: 'NaN' is not a finite number"},
      {ask + "--repeat-penalty inf", "--repeat-penalty"},
      {ask + "-n 99999999999999999999", "--max-tokens"},
      {ask + "--top-k 99999999999999999999", "--top-k: '99999999999999999999' is out of range"},
      {ask + "--text-seed -1", "--text-seed"},
      {ask + "-t 100000", "100000 threads is more than this machine can use"},
      {create + "--cfg-scale -inf", "--cfg-scale"},
      {create + "--cfg-scale nan", "--cfg-scale: 'nan' is not a finite number"},
      {create + "--seed -1", "--seed"},
      {create + "--seed 9223372036854775808", "'9223372036854775808' is out of range"},
      {create + "--guidance-rescale 1e999", "--guidance-rescale"},
      {create + "--eta 1e999", "--eta"},
      {train + "--lr nan", "--lr: 'nan' is not a finite number"},
      {train + "--lr -1e-4", "--lr: '-1e-4' must be > 0"},
      {train + "--weight-decay -0.1", "--weight-decay: '-0.1' must be >= 0"},
      {train + "--vm-weight -10", "--vm-weight: '-10' must be >= 0"},
      {train + "--warmup-ratio nan", "--warmup-ratio: 'nan' is not a finite number"},
      {train + "--seed -1", "--seed"},
      {train + "--seed 18446744073709551615", "--seed"},
      {train + "--seed 99999999999999999999999", "--seed"},
      {train + "--max-steps 1e3", "--max-steps"},
      {"world gen -o /tmp/never --seed -3", "--seed"},
      {"demo --steps nan", "--steps"},
      {"demo --seed -1", "--seed: '-1' is negative"},
  };
  for (const BadOption& c : cases) {
    const auto r = test::cli(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
}

// The same options with sensible values get past parsing (they fail later, on the missing data file, with 1).
TEST(CliOptions, GoodNumbersPass) {
  const auto r = test::cli("train -m " + kModel + " --data /nonexistent/x.jsonl -o /tmp/dl_never_" +
                           std::to_string(::getpid()) + " --lr 1e-4 --seed 9223372036854775807 --weight-decay 0 -t 2");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("x.jsonl"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace dl
