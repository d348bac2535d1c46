// The server's request parser (apps/dreamllm/serve_api.h) on arbitrary bodies: the first byte picks the route,
// the rest is the body. Every input either parses or is refused with an HttpError (or a dl::Error); anything else
// (a crash, a sanitizer report, another exception type) is a bug. Picture parts decode through io::decode_image,
// so a body may carry any bytes as a data URI.
#include <string>

#include "fuzz_common.h"
#include "serve_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  dl::fuzz::run([&] {
    try {
      switch (data[0] % 4) {
        case 0: dl::app::serve::parse_chat_request(body); break;
        case 1: dl::app::serve::parse_image_request(body); break;
        case 2: dl::app::serve::parse_document_request(body); break;
        default: dl::app::serve::decode_data_uri(body, "image_url"); break;
      }
    } catch (const dl::app::serve::HttpError&) {
    }
  });
  return 0;
}
