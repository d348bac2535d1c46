#include <string>

#include "fuzz_common.h"
#include "io/config.h"

// Every config parser on the same JSON text.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  dl::fuzz::run([&] { dl::io::parse_dreamllm_config(text, "fuzz"); });
  dl::fuzz::run([&] { dl::io::parse_clip_vision_config(text, "fuzz"); });
  dl::fuzz::run([&] { dl::io::parse_unet_config(text, "fuzz"); });
  dl::fuzz::run([&] { dl::io::parse_vae_config(text, "fuzz"); });
  dl::fuzz::run([&] { dl::io::parse_scheduler_config(text, "fuzz"); });
  return 0;
}
