// The server's request parsing (apps/dreamllm/serve_api.h) on bad inputs: every malformed body, wrong type, value
// out of range or undecodable picture is an HttpError with the status, the OpenAI error fields and a message naming
// the field; good requests parse into what they say.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/image_file.h"
#include "serve_api.h"

namespace dl::app::serve {
namespace {

using nlohmann::json;

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string data_uri(const std::string& bytes, const std::string& type = "image/png") {
  return "data:" + type + ";base64," + base64_encode(bytes);
}

// A PNG whose header claims width x height pixels and holds none.
std::string png_header_only(uint32_t width, uint32_t height) {
  auto be32 = [](std::string& s, uint32_t v) {
    for (int i = 3; i >= 0; --i) s.push_back(char((v >> (8 * i)) & 0xFF));
  };
  std::string ihdr = "IHDR";
  be32(ihdr, width);
  be32(ihdr, height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  std::string png = "\x89PNG\r\n\x1a\n";
  be32(png, 13);
  png += ihdr;
  be32(png, 0);  // CRC (not checked before the size)
  return png;
}

json chat_with(const json& content) {
  return {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", content}}})}};
}

// Expects `f` to throw HttpError with `status`, a message containing `says` and (when given) `param`.
template <class F>
void expect_refused(F&& f, int status, const std::string& says, const std::string& param = "") {
  try {
    f();
    ADD_FAILURE() << "accepted; expected " << status << " saying '" << says << "'";
  } catch (const HttpError& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    if (!param.empty()) {
      EXPECT_EQ(e.param(), param) << e.what();
    }
  }
}

void chat_refused(const std::string& body, const std::string& says, const std::string& param = "") {
  SCOPED_TRACE(body.substr(0, 200));
  expect_refused([&] { parse_chat_request(body); }, 400, says, param);
}

TEST(ServeApi, MalformedBodiesAreRefusedAsInvalidJson) {
  for (const std::string& body : std::vector<std::string>{"", "{", "{bad", "[1, 2]", "\"text\"", "null", "{\"model\": \"m\",}",
                                 std::string("{\"model\":\"m\x00\"}", 14), std::string(100000, '[')}) {
    SCOPED_TRACE(body.substr(0, 20));
    try {
      parse_chat_request(body);
      ADD_FAILURE() << "accepted";
    } catch (const HttpError& e) {
      EXPECT_EQ(e.status(), 400);
      EXPECT_EQ(e.type(), "invalid_request_error");
      EXPECT_EQ(e.code(), "invalid_json") << e.what();
    }
  }
}

TEST(ServeApi, WrongTypesAndRangesNameTheField) {
  const json ok = chat_with("hi");
  auto with = [&](const char* key, const json& v) {
    json j = ok;
    j[key] = v;
    return j.dump();
  };
  chat_refused(json{{"messages", ok["messages"]}}.dump(), "'model' is required", "model");
  chat_refused(with("model", 5), "'model' must be a string, not a number", "model");
  chat_refused(with("temperature", "hot"), "'temperature' must be a number, not a string", "temperature");
  chat_refused(with("temperature", 2.5), "'temperature' must be in [0, 2], got 2.5", "temperature");
  chat_refused(with("temperature", -0.1), "'temperature' must be in [0, 2]", "temperature");
  chat_refused(R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e999})", "number overflow");
  chat_refused(with("top_p", 0), "'top_p' must be in (0, 1]", "top_p");
  chat_refused(with("n", "3"), "'n' must be an integer, not a string", "n");
  chat_refused(with("n", 0), "'n' must be in [1, 8], got 0", "n");
  chat_refused(with("n", 9), "'n' must be in [1, 8], got 9", "n");
  chat_refused(with("max_tokens", -1), "'max_tokens' must be in [1,", "max_tokens");
  chat_refused(with("max_tokens", 1.5), "'max_tokens' must be an integer, got 1.5", "max_tokens");
  chat_refused(with("max_tokens", 18446744073709551615u), "'max_tokens' is out of range", "max_tokens");
  chat_refused(with("seed", -3), "'seed' must be in [0,", "seed");
  chat_refused(with("stream", "yes"), "'stream' must be a boolean, not a string", "stream");
  chat_refused(with("stop", 5), "'stop' must be a string or an array of strings", "stop");
  chat_refused(with("stop", json::array({"a", 1})), "'stop' must be a string or an array of strings", "stop");
  chat_refused(with("stop", json::array({"a", "b", "c", "d", "e"})), "at most 4", "stop");
  chat_refused(with("stop", ""), "must not be empty", "stop");
  chat_refused(with("stream_options", 1), "'stream_options' must be an object", "stream_options");
  chat_refused(with("sampler", "magic"), "'sampler' must be one of", "sampler");
  chat_refused(with("steps", 0), "'steps' must be in [1, 1000]", "steps");
  chat_refused(with("size", "big"), "'size' must be WIDTHxHEIGHT", "size");
}

TEST(ServeApi, MessagesAreChecked) {
  chat_refused(R"({"model":"m"})", "'messages' is required", "messages");
  chat_refused(R"({"model":"m","messages":{}})", "'messages' must be an array, not an object", "messages");
  chat_refused(R"({"model":"m","messages":[]})", "at least one message", "messages");
  chat_refused(R"({"model":"m","messages":[3]})", "messages[0] must be an object, not a number", "messages[0]");
  chat_refused(R"({"model":"m","messages":[{"content":"x"}]})", "messages[0].role must be a string");
  chat_refused(R"({"model":"m","messages":[{"role":"robot","content":"x"}]})", "system, user or assistant, got 'robot'");
  chat_refused(R"({"model":"m","messages":[{"role":"user"}]})", "messages[0].content is required");
  chat_refused(R"({"model":"m","messages":[{"role":"user","content":7}]})", "a string or an array of parts, not a number");
  chat_refused(R"({"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]})",
               "the last message must be the user's");
  chat_refused(chat_with(json::array({{{"type", "audio"}}})).dump(), "text or image_url, got 'audio'",
               "messages[0].content[0].type");
  chat_refused(chat_with(json::array({{{"type", "text"}, {"text", 4}}})).dump(), ".text must be a string");
  chat_refused(chat_with(json::array({{{"type", "image_url"}, {"image_url", {{"url", 4}}}}})).dump(),
               "image_url.url must be a string");
  chat_refused(R"({"model":"m","messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},{"role":"user","content":"x"}]})",
               "only user messages may hold images");
}

TEST(ServeApi, PicturesThatDoNotDecodeAreRefusedBeforeAnyWork) {
  const std::string param = "messages[0].content[0].image_url";
  auto image = [](const std::string& url) {
    return chat_with(json::array({{{"type", "image_url"}, {"image_url", {{"url", url}}}}})).dump();
  };
  chat_refused(image("http://example.com/cat.png"), "this server fetches nothing from the network", param);
  chat_refused(image("file:///etc/passwd"), "only data URIs", param);
  chat_refused(image("data:text/plain;base64,aGk="), "not an image", param);
  chat_refused(image("data:image/png,rawbytes"), "not base64-encoded", param);
  chat_refused(image("data:image/png;base64"), "no ','", param);
  chat_refused(image("data:image/png;base64,@@@@"), "base64 is malformed", param);
  chat_refused(image("data:image/png;base64,"), "holds no bytes", param);
  chat_refused(image(data_uri("hello, not a picture")), "not a readable image", param);
  const std::string truncated = file_bytes(std::string(DL_FIXTURE_DIR) + "/images/files/truncated.png");
  ASSERT_FALSE(truncated.empty());
  chat_refused(image(data_uri(truncated)), param, param);
  // 100000 x 100000 declared in a 33-byte file: refused from the header, over Pillow's decompression-bomb limit.
  chat_refused(image(data_uri(png_header_only(100000, 100000))), "over the limit of 89478485 pixels", param);
  // More pictures than a request may carry.
  const std::string rgb = data_uri(file_bytes(std::string(DL_FIXTURE_DIR) + "/images/files/rgb.png"));
  json parts = json::array();
  for (int i = 0; i < 9; ++i) parts.push_back({{"type", "image_url"}, {"image_url", {{"url", rgb}}}});
  chat_refused(chat_with(parts).dump(), "at most 8 images per request");
}

TEST(ServeApi, AGoodChatRequestParsesIntoWhatItSays) {
  const std::string rgb_bytes = file_bytes(std::string(DL_FIXTURE_DIR) + "/images/files/rgb.png");
  const json body = {
      {"model", "shapes-world"},
      {"messages",
       json::array({{{"role", "system"}, {"content", "Be brief."}},
                    {{"role", "user"},
                     {"content", json::array({{{"type", "image_url"}, {"image_url", {{"url", data_uri(rgb_bytes)}}}},
                                              {{"type", "text"}, {"text", "What is it?"}}})}}})},
      {"temperature", 0},
      {"top_p", 0.5},
      {"max_tokens", 12},
      {"seed", 7},
      {"stop", "\n"},
      {"n", 2},
      {"stream", true},
      {"stream_options", {{"include_usage", true}}},
      {"unknown_field_clients_send", {{"ignored", true}}}};
  const ChatRequest r = parse_chat_request(body.dump());
  EXPECT_EQ(r.model, "shapes-world");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].text, "<image>What is it?");
  EXPECT_EQ(r.messages[1].images, 1u);
  ASSERT_EQ(r.images.size(), 1u);
  const io::Image direct = io::decode_image(reinterpret_cast<const unsigned char*>(rgb_bytes.data()),
                                            rgb_bytes.size(), "rgb.png");
  EXPECT_EQ(r.images[0].width, direct.width);
  EXPECT_EQ(r.images[0].rgb, direct.rgb);
  EXPECT_EQ(r.temperature, 0.0);
  EXPECT_EQ(r.top_p, 0.5);
  EXPECT_EQ(r.max_tokens, 12);
  EXPECT_EQ(r.seed, 7u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.n, 2);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  // Absent and null fields take OpenAI's defaults.
  const ChatRequest d = parse_chat_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":null})");
  EXPECT_EQ(d.temperature, 1.0);
  EXPECT_FALSE(d.max_tokens.has_value());
  EXPECT_EQ(d.n, 1);
  EXPECT_FALSE(d.stream);
}

TEST(ServeApi, ImageRequestsAreChecked) {
  auto refused = [](const std::string& body, const std::string& says, const std::string& param) {
    SCOPED_TRACE(body);
    expect_refused([&] { parse_image_request(body); }, 400, says, param);
  };
  refused(R"({"model":"m"})", "'prompt' is required", "prompt");
  refused(R"({"model":"m","prompt":["x"]})", "'prompt' must be a string, not an array", "prompt");
  refused(R"({"model":"m","prompt":"x","n":11})", "'n' must be in [1, 8]", "n");
  refused(R"({"model":"m","prompt":"x","size":"0x512"})", "'size' must be WIDTHxHEIGHT", "size");
  refused(R"({"model":"m","prompt":"x","size":"512x"})", "'size' must be WIDTHxHEIGHT", "size");
  refused(R"({"model":"m","prompt":"x","size":"-5x5"})", "'size' must be WIDTHxHEIGHT", "size");
  refused(R"({"model":"m","prompt":"x","size":"9000x9000"})", "larger than 4096 pixels per side", "size");
  refused(R"({"model":"m","prompt":"x","size":"99999999999x2"})", "'size' must be WIDTHxHEIGHT", "size");
  refused(R"({"model":"m","prompt":"x","response_format":"url"})", "must be b64_json", "response_format");
  refused(R"({"model":"m","prompt":"x","guidance":1000})", "'guidance' must be in [0, 100]", "guidance");
  refused(R"({"model":"m","prompt":"x","steps":1001})", "'steps' must be in [1, 1000]", "steps");
  const ImageRequest r = parse_image_request(
      R"({"model":"m","prompt":"a red circle","n":2,"size":"64x32","response_format":"b64_json","seed":9,)"
      R"("steps":20,"sampler":"dpmpp2m","guidance":3,"negative_prompt":"blue"})");
  EXPECT_EQ(r.prompt, "a red circle");
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.width, 64);
  EXPECT_EQ(r.height, 32);
  EXPECT_EQ(r.seed, 9u);
  EXPECT_EQ(r.steps, 20);
  EXPECT_EQ(r.sampler, "dpmpp2m");
  EXPECT_EQ(r.guidance, 3.0);
  EXPECT_EQ(r.negative_prompt, "blue");
  // `create`'s defaults when nothing is said.
  const ImageRequest d = parse_image_request(R"({"model":"m","prompt":"x"})");
  EXPECT_EQ(d.seed, 42u);
  EXPECT_EQ(d.width, 0);
  EXPECT_FALSE(d.steps.has_value());
}

TEST(ServeApi, DocumentRequestsAreChecked) {
  expect_refused([] { parse_document_request(R"({"model":"m","prompt":"x","max_images":65})"); }, 400,
                 "'max_images' must be in [0, 64]", "max_images");
  expect_refused([] { parse_document_request(R"({"model":"m","prompt":"x","raw":1})"); }, 400,
                 "'raw' must be a boolean", "raw");
  const DocumentRequest d = parse_document_request(R"({"model":"m","prompt":"Write."})");
  EXPECT_EQ(d.max_tokens, 512);  // `write`'s defaults
  EXPECT_EQ(d.max_images, 4);
  EXPECT_EQ(d.temperature, 0.0);
  EXPECT_TRUE(d.stream);
}

TEST(ServeApi, ErrorBodiesHaveOpenAIsShape) {
  const json a = json::parse(error_body(HttpError(401, "bad key", "", "invalid_api_key")));
  EXPECT_EQ(a["error"]["message"], "bad key");
  EXPECT_EQ(a["error"]["type"], "authentication_error");
  EXPECT_TRUE(a["error"]["param"].is_null());
  EXPECT_EQ(a["error"]["code"], "invalid_api_key");
  const json b = json::parse(error_body(HttpError(404, "no such model", "model", "model_not_found")));
  EXPECT_EQ(b["error"]["type"], "not_found_error");
  EXPECT_EQ(b["error"]["param"], "model");
  EXPECT_EQ(json::parse(error_body(HttpError(503, "busy")))["error"]["type"], "server_overloaded");
  EXPECT_EQ(json::parse(error_body(HttpError(500, "bug")))["error"]["type"], "server_error");
  // Invalid UTF-8 quoted back from a request still gives a valid body.
  EXPECT_NO_THROW(json::parse(error_body(HttpError(400, std::string("model '\xff\xfe' is unknown")))));
}

TEST(ServeApi, Base64RoundTripsAndRefusesMalformedText) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\x00\xff\x10", 3)})
    EXPECT_EQ(base64_decode(base64_encode(s)), s);
  EXPECT_EQ(base64_encode("hello"), "aGVsbG8=");  // RFC 4648's alphabet and padding
  EXPECT_EQ(base64_decode("aGVsbG8"), "hello");  // padding optional
  EXPECT_FALSE(base64_decode("aGVs bG8="));
  EXPECT_FALSE(base64_decode("a"));
  EXPECT_FALSE(base64_decode("aGVsbG8=="));
  EXPECT_FALSE(base64_decode("aG=sbG8="));
}

TEST(ServeApi, BearerTokens) {
  EXPECT_EQ(bearer_token("Bearer sk-123"), "sk-123");
  EXPECT_EQ(bearer_token("bearer  sk-123 "), "sk-123");
  EXPECT_EQ(bearer_token("Basic dXNlcg=="), "");
  EXPECT_EQ(bearer_token(""), "");
}

}  // namespace
}  // namespace dl::app::serve
