// Errors: every failure in dreamllm.cpp is a dl::Error with a message naming what went wrong.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dl {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(detail::concat(args...));
}

}  // namespace dl

// DL_CHECK(cond, parts...): throws dl::Error built from the parts when cond is false.
#define DL_CHECK(cond, ...)                \
  do {                                     \
    if (!(cond)) ::dl::fail(__VA_ARGS__);  \
  } while (0)
