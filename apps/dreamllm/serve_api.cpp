#include "serve_api.h"

#include <cmath>
#include <limits>
#include <tuple>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/image_file.h"

namespace dl::app::serve {

using nlohmann::json;

HttpError::HttpError(int status, const std::string& message, std::string param, std::string code)
    : std::runtime_error(message), status_(status), param_(std::move(param)), code_(std::move(code)) {}

std::string HttpError::type() const {
  switch (status_) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "server_overloaded";
    default: return status_ >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string error_body(const HttpError& e) {
  json err = {{"message", e.what()}, {"type", e.type()}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param().empty()) err["param"] = e.param();
  if (!e.code().empty()) err["code"] = e.code();
  // Invalid UTF-8 a client sent (quoted back in a message) is replaced, not a reason to fail the error itself.
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw HttpError(400, message, param, "invalid_value");
}

json parse_body(std::string_view body) {
  json j;
  try {
    j = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number past double's range (1e999).
    throw HttpError(400, std::string("the request body is not valid JSON: ") + e.what(), "", "invalid_json");
  }
  if (!j.is_object()) throw HttpError(400, "the request body must be a JSON object", "", "invalid_json");
  return j;
}

const char* type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// A field that is absent or null counts as not given, as in OpenAI's API.
const json* field(const json& o, const char* name) {
  const auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::optional<std::string> get_string(const json& o, const char* name, bool required = false) {
  const json* v = field(o, name);
  if (!v) {
    if (required) bad(name, std::string("'") + name + "' is required");
    return std::nullopt;
  }
  if (!v->is_string()) bad(name, std::string("'") + name + "' must be a string, not " + type_name(*v));
  return v->get<std::string>();
}

std::optional<bool> get_bool(const json& o, const char* name) {
  const json* v = field(o, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(name, std::string("'") + name + "' must be a boolean, not " + type_name(*v));
  return v->get<bool>();
}

std::optional<double> get_number(const json& o, const char* name, double lo, double hi) {
  const json* v = field(o, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(name, std::string("'") + name + "' must be a number, not " + type_name(*v));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "'%s' must be in [%g, %g], got %g", name, lo, hi, x);
    bad(name, msg);
  }
  return x;
}

std::optional<int64_t> get_int(const json& o, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(o, name);
  if (!v) return std::nullopt;
  // 3.0 is an integer in JSON's number model; 3.5, 1e30 and -1 where lo is 0 are not accepted.
  if (!v->is_number()) bad(name, std::string("'") + name + "' must be an integer, not " + type_name(*v));
  int64_t x = 0;
  if (v->is_number_integer() && v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) bad(name, std::string("'") + name + "' is out of range");
    x = int64_t(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else {
    const double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9e15)
      bad(name, std::string("'") + name + "' must be an integer, got " + v->dump());
    x = int64_t(d);
  }
  if (x < lo || x > hi)
    bad(name, std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                  "], got " + std::to_string(x));
  return x;
}

std::string get_model(const json& o) { return *get_string(o, "model", true); }

void read_drawing(const json& o, const Limits& limits, std::optional<int64_t>& steps,
                  std::optional<std::string>& sampler, std::optional<double>& guidance, std::string& negative) {
  steps = get_int(o, "steps", 1, limits.max_steps);
  sampler = get_string(o, "sampler");
  if (sampler) {
    static const char* kSamplers[] = {"ddpm", "ddim", "pndm", "dpmpp2m", "euler", "euler_a"};
    bool known = false;
    for (const char* s : kSamplers) known = known || *sampler == s;
    if (!known) bad("sampler", "'sampler' must be one of ddpm, ddim, pndm, dpmpp2m, euler, euler_a; got '" + *sampler + "'");
  }
  guidance = get_number(o, "guidance", 0.0, 100.0);
  if (auto neg = get_string(o, "negative_prompt")) negative = *neg;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    if (i + 2 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 2]));
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kAlphabet[v & 63] : '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  size_t n = text.size();
  size_t pad = 0;
  while (n > 0 && text[n - 1] == '=' && pad < 2) --n, ++pad;
  if (n % 4 == 1 || (pad && (n + pad) % 4 != 0)) return std::nullopt;
  std::string out;
  out.reserve(n / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; ++i) {
    const int v = value(text[i]);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  return out;
}

std::string png_data_uri(const io::Image& picture) {
  return "data:image/png;base64," + base64_encode(io::encode_png(picture));
}

io::Image decode_data_uri(std::string_view uri, const std::string& param) {
  if (uri.rfind("data:", 0) != 0)
    bad(param, "only data URIs (data:image/...;base64,...) are accepted; this server fetches nothing from the "
               "network");
  const size_t comma = uri.find(',');
  if (comma == std::string_view::npos) bad(param, "the data URI has no ',' before its data");
  const std::string_view head = uri.substr(5, comma - 5);
  if (head.rfind("image/", 0) != 0) bad(param, "the data URI is not an image (its type is '" + std::string(head) + "')");
  if (head.size() < 7 || head.substr(head.size() - 7) != ";base64") bad(param, "the data URI is not base64-encoded");
  const auto bytes = base64_decode(uri.substr(comma + 1));
  if (!bytes) bad(param, "the data URI's base64 is malformed");
  if (bytes->empty()) bad(param, "the data URI holds no bytes");
  try {
    return io::decode_image(reinterpret_cast<const unsigned char*>(bytes->data()), bytes->size(), param);
  } catch (const Error& e) {
    bad(param, e.what());
  }
}

std::pair<int64_t, int64_t> parse_size(std::string_view size, int64_t max_side) {
  if (size.empty() || size == "auto") return {0, 0};
  const size_t x = size.find('x');
  auto side = [&](std::string_view s) -> int64_t {
    if (s.empty() || s.size() > 6) return -1;
    int64_t v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return -1;
      v = v * 10 + (c - '0');
    }
    return v;
  };
  const int64_t w = x == std::string_view::npos ? -1 : side(size.substr(0, x));
  const int64_t h = x == std::string_view::npos ? -1 : side(size.substr(x + 1));
  if (w <= 0 || h <= 0) bad("size", "'size' must be WIDTHxHEIGHT (e.g. \"512x512\") or \"auto\", got '" + std::string(size) + "'");
  if (w > max_side || h > max_side)
    bad("size", "'size' " + std::string(size) + " is larger than " + std::to_string(max_side) +
                    " pixels per side, the most this server draws");
  return {w, h};
}

ChatRequest parse_chat_request(std::string_view body, const Limits& limits) {
  const json j = parse_body(body);
  ChatRequest r;
  r.model = get_model(j);
  const json* msgs = field(j, "messages");
  if (!msgs) bad("messages", "'messages' is required");
  if (!msgs->is_array()) bad("messages", std::string("'messages' must be an array, not ") + type_name(*msgs));
  if (msgs->empty()) bad("messages", "'messages' must hold at least one message");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(at, at + " must be an object, not " + type_name(m));
    ChatMessage out;
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad(at + ".role", at + ".role must be a string");
    out.role = role->get<std::string>();
    if (out.role == "developer") out.role = "system";  // OpenAI's newer name for it
    if (out.role != "system" && out.role != "user" && out.role != "assistant")
      bad(at + ".role", at + ".role must be system, user or assistant, got '" + out.role + "'");
    const json* content = field(m, "content");
    if (!content) {
      if (out.role != "assistant") bad(at + ".content", at + ".content is required");
    } else if (content->is_string()) {
      out.text = content->get<std::string>();
    } else if (content->is_array()) {
      for (size_t k = 0; k < content->size(); ++k) {
        const json& part = (*content)[k];
        const std::string pat = at + ".content[" + std::to_string(k) + "]";
        if (!part.is_object()) bad(pat, pat + " must be an object, not " + type_name(part));
        const json* type = field(part, "type");
        if (!type || !type->is_string()) bad(pat + ".type", pat + ".type must be a string");
        const std::string t = type->get<std::string>();
        if (t == "text") {
          const json* text = field(part, "text");
          if (!text || !text->is_string()) bad(pat + ".text", pat + ".text must be a string");
          out.text += text->get<std::string>();
        } else if (t == "image_url") {
          if (out.role != "user") bad(pat, pat + ": only user messages may hold images");
          if (int64_t(r.images.size()) >= limits.max_images)
            bad(pat, "at most " + std::to_string(limits.max_images) + " images per request");
          const json* iu = field(part, "image_url");
          const json* url = iu && iu->is_object() ? field(*iu, "url") : iu;
          if (!url || !url->is_string()) bad(pat + ".image_url", pat + ".image_url.url must be a string");
          r.images.push_back(decode_data_uri(url->get<std::string>(), pat + ".image_url"));
          out.text += "<image>";
          ++out.images;
        } else {
          bad(pat + ".type", pat + ".type must be text or image_url, got '" + t + "'");
        }
      }
    } else {
      bad(at + ".content", at + ".content must be a string or an array of parts, not " + type_name(*content));
    }
    r.messages.push_back(std::move(out));
  }
  if (r.messages.back().role != "user") bad("messages", "the last message must be the user's");
  if (auto v = get_number(j, "temperature", 0.0, 2.0)) r.temperature = *v;
  if (auto v = get_number(j, "top_p", 0.0, 1.0)) {
    if (*v <= 0) bad("top_p", "'top_p' must be in (0, 1], got 0");
    r.top_p = *v;
  }
  r.max_tokens = get_int(j, "max_completion_tokens", 1, int64_t(1) << 20);
  if (auto v = get_int(j, "max_tokens", 1, int64_t(1) << 20)) r.max_tokens = v;
  if (auto v = get_int(j, "seed", 0, std::numeric_limits<int64_t>::max())) r.seed = uint64_t(*v);
  if (const json* s = field(j, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 4) bad("stop", "'stop' holds at most 4 strings");
      for (const auto& e : *s) {
        if (!e.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(e.get<std::string>());
      }
    } else {
      bad("stop", std::string("'stop' must be a string or an array of strings, not ") + type_name(*s));
    }
    for (const auto& s : r.stop)
      if (s.empty()) bad("stop", "'stop' strings must not be empty");
  }
  if (auto v = get_int(j, "n", 1, limits.max_choices)) r.n = *v;
  if (auto v = get_bool(j, "stream")) r.stream = *v;
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (auto v = get_bool(*so, "include_usage")) r.include_usage = *v;
  }
  if (auto v = get_bool(j, "draw")) r.draw = *v;
  r.max_images = get_int(j, "max_images", 0, 64);
  if (auto v = get_int(j, "image_seed", 0, std::numeric_limits<int64_t>::max())) r.image_seed = uint64_t(*v);
  if (auto s = get_string(j, "size")) std::tie(r.width, r.height) = parse_size(*s, limits.max_side);
  read_drawing(j, limits, r.steps, r.sampler, r.guidance, r.negative_prompt);
  if (auto v = get_bool(j, "force")) r.force = *v;
  return r;
}

ImageRequest parse_image_request(std::string_view body, const Limits& limits) {
  const json j = parse_body(body);
  ImageRequest r;
  r.model = get_model(j);
  r.prompt = *get_string(j, "prompt", true);
  if (auto v = get_int(j, "n", 1, limits.max_pictures)) r.n = *v;
  if (auto s = get_string(j, "size")) std::tie(r.width, r.height) = parse_size(*s, limits.max_side);
  if (auto f = get_string(j, "response_format"); f && *f != "b64_json")
    bad("response_format", "'response_format' must be b64_json: this server keeps no files to link to (got '" + *f +
                               "')");
  if (auto v = get_int(j, "seed", 0, std::numeric_limits<int64_t>::max())) r.seed = uint64_t(*v);
  if (auto v = get_bool(j, "stream")) r.stream = *v;
  read_drawing(j, limits, r.steps, r.sampler, r.guidance, r.negative_prompt);
  if (auto v = get_bool(j, "force")) r.force = *v;
  return r;
}

DocumentRequest parse_document_request(std::string_view body, const Limits& limits) {
  const json j = parse_body(body);
  DocumentRequest r;
  r.model = get_model(j);
  r.prompt = *get_string(j, "prompt", true);
  if (auto s = get_string(j, "system")) r.system = *s;
  if (auto v = get_bool(j, "raw")) r.raw = *v;
  if (auto v = get_int(j, "max_tokens", 1, int64_t(1) << 20)) r.max_tokens = *v;
  if (auto v = get_int(j, "max_images", 0, 64)) r.max_images = *v;
  if (auto v = get_number(j, "temperature", 0.0, 2.0)) r.temperature = *v;
  if (auto v = get_number(j, "top_p", 0.0, 1.0)) {
    if (*v <= 0) bad("top_p", "'top_p' must be in (0, 1], got 0");
    r.top_p = *v;
  }
  if (auto v = get_int(j, "seed", 0, std::numeric_limits<int64_t>::max())) r.seed = uint64_t(*v);
  if (auto v = get_int(j, "text_seed", 0, std::numeric_limits<int64_t>::max())) r.text_seed = uint64_t(*v);
  if (auto s = get_string(j, "size")) std::tie(r.width, r.height) = parse_size(*s, limits.max_side);
  if (auto v = get_number(j, "image_bias", -100.0, 100.0)) r.image_bias = *v;
  if (auto v = get_bool(j, "stream")) r.stream = *v;
  read_drawing(j, limits, r.steps, r.sampler, r.guidance, r.negative_prompt);
  if (auto v = get_bool(j, "force")) r.force = *v;
  return r;
}

std::string sse(std::string_view json_text) {
  std::string out = "data: ";
  out += json_text;
  out += "\n\n";
  return out;
}

std::string bearer_token(std::string_view authorization) {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() < kScheme.size()) return "";
  for (size_t i = 0; i < kScheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != std::tolower(static_cast<unsigned char>(kScheme[i])))
      return "";
  std::string_view key = authorization.substr(kScheme.size());
  while (!key.empty() && key.front() == ' ') key.remove_prefix(1);
  while (!key.empty() && key.back() == ' ') key.remove_suffix(1);
  return std::string(key);
}

}  // namespace dl::app::serve
