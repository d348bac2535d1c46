// `dreamllm serve`'s requests and responses as data, without sockets: the JSON bodies of the OpenAI-compatible
// routes parsed and checked into plain structs, errors in OpenAI's error shape, and the JSON of replies and
// server-sent events. Everything a client can send goes through here first, so it is tested (and fuzzed) alone.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "io/image.h"

namespace dl::app::serve {

// A request the server refuses: the HTTP status and OpenAI's error fields ("type", "param", "code").
class HttpError : public std::runtime_error {
 public:
  HttpError(int status, const std::string& message, std::string param = "", std::string code = "");
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // OpenAI's error type for the status: invalid_request_error, authentication_error, not_found_error, ...
  std::string type() const;

 private:
  int status_;
  std::string param_, code_;
};

// {"error": {"message", "type", "param", "code"}}, as OpenAI answers (param and code null when empty).
std::string error_body(const HttpError& e);

// What the server accepts at most. A request past a limit is refused with a message that names it.
struct Limits {
  size_t max_body_bytes = size_t(32) << 20;  // the HTTP layer's limit (413); named here for the message
  int64_t max_images = 8;                    // pictures in one chat request
  int64_t max_choices = 8;                   // chat n
  int64_t max_pictures = 8;                  // images n
  int64_t max_side = 4096;                   // -W/-H of `create`, per side
  int64_t max_steps = 1000;
};

// One chat message: role and text; each image part becomes "<image>" where it stood (place_images puts the span
// there), and its picture is appended to ChatRequest::images.
struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string text;
  size_t images = 0;  // image parts in this message
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  std::vector<io::Image> images;  // decoded, in the order of the "<image>" placeholders
  double temperature = 1.0;       // OpenAI's default; 0 decodes greedily
  double top_p = 1.0;
  std::optional<int64_t> max_tokens;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  int64_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Extensions: whether an answer may draw (<dream_start> draws a picture), and how, as `create` names it.
  bool draw = true;
  std::optional<int64_t> max_images;  // per answer; default 4, as `write`
  uint64_t image_seed = 42;           // picture k of choice i draws from image_seed + i + k + 1, as `write`
  int64_t width = 0, height = 0;
  std::optional<int64_t> steps;
  std::optional<std::string> sampler;
  std::optional<double> guidance;
  std::string negative_prompt;
  bool force = false;  // a prompt outside the model's declared language is answered anyway (`--force`)
};
ChatRequest parse_chat_request(std::string_view body, const Limits& limits = {});

struct ImageRequest {
  std::string model;
  std::string prompt;
  int64_t n = 1;
  int64_t width = 0, height = 0;  // 0: the model's size
  uint64_t seed = 42;             // `dreamllm create`'s default
  bool stream = false;            // progress events, then the pictures
  // Extensions, as `dreamllm create` names them.
  std::optional<int64_t> steps;
  std::optional<std::string> sampler;
  std::optional<double> guidance;
  std::string negative_prompt;
  bool force = false;
};
ImageRequest parse_image_request(std::string_view body, const Limits& limits = {});

// Our own route: `dreamllm write` over HTTP.
struct DocumentRequest {
  std::string model;
  std::string prompt;
  std::string system;
  bool raw = false;
  int64_t max_tokens = 512;  // write's default
  int64_t max_images = 4;
  double temperature = 0.0;  // write's default: greedy
  double top_p = 1.0;
  uint64_t seed = 42;        // the pictures' seed (write's --seed)
  uint64_t text_seed = 0;    // write's --text-seed
  int64_t width = 0, height = 0;
  std::optional<int64_t> steps;
  std::optional<std::string> sampler;
  std::optional<double> guidance;
  std::string negative_prompt;
  double image_bias = 0.0;
  bool stream = true;
  bool force = false;
};
DocumentRequest parse_document_request(std::string_view body, const Limits& limits = {});

// "data:image/png;base64,...." -> the picture. Anything else (an http URL: the server fetches nothing), bad base64,
// bytes that do not decode, or a header that declares more pixels than io::max_image_pixels() is a 400 naming
// `param`.
io::Image decode_data_uri(std::string_view uri, const std::string& param);

std::string base64_encode(std::string_view bytes);
// Strict standard base64 (padding optional, whitespace refused); nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view text);
// "data:image/png;base64,..." of a picture.
std::string png_data_uri(const io::Image& picture);

// "512x512" -> {512, 512}; "auto" or "" -> {0, 0}. Sides must be positive and at most `max_side`.
std::pair<int64_t, int64_t> parse_size(std::string_view size, int64_t max_side);

// One server-sent event: "data: <json>\n\n".
std::string sse(std::string_view json);

// The key of "Authorization: Bearer KEY"; empty when the header is missing or of another scheme.
std::string bearer_token(std::string_view authorization);

}  // namespace dl::app::serve
