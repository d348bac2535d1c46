// `dreamllm serve`: the model loaded once behind an OpenAI-compatible HTTP server (cpp-httplib), plus our own
// document route and a web page. Requests are parsed and checked by serve_api.h; the work is done by the same
// pipeline functions as `ask`, `create` and `write`, so the same seed gives the same answer and the same pictures.
//
// Concurrency: cpp-httplib gives each connection a thread; a request that needs the model first takes one of
// --parallel slots, waiting at most --queue-timeout seconds with at most --max-queue others (past either: 503
// with Retry-After). Streamed work stops when the client goes away (a failed write of an event), and everything
// running stops at SIGINT/SIGTERM, after which the process exits 0.
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_common.h"
#include "core/error.h"
#include "core/ops.h"
#include "core/thread_pool.h"
#include "io/image_file.h"
#include "pipelines/comprehend.h"
#include "pipelines/interleave.h"
#include "pipelines/text_stream.h"
#include "serve_api.h"
#include "text/chat_template.h"
#include "world/prompt_check.h"

namespace dl::app {

extern const char* const kWebPage;  // web/index.html, embedded at build time (serve_page.cpp)

namespace {

using nlohmann::json;
using serve::HttpError;

// Thrown from a generation or sampling callback to abandon a request whose client left or whose server stops.
struct Cancelled {};

std::atomic<bool> g_stopping{false};

// The --parallel slots and the queue in front of them.
class Slots {
 public:
  Slots(int slots, int max_waiting) : free_(slots), max_waiting_(max_waiting) {}

  // Takes a slot within `wait`; false when the queue is full, the wait ran out, or the server stops.
  bool acquire(std::chrono::milliseconds wait) {
    std::unique_lock lk(mu_);
    if (free_ == 0 && waiting_ >= max_waiting_) return false;
    ++waiting_;
    const bool got = cv_.wait_for(lk, wait, [&] { return free_ > 0 || g_stopping.load(); });
    --waiting_;
    if (!got || g_stopping.load()) return false;
    --free_;
    return true;
  }
  void release() {
    {
      std::lock_guard lk(mu_);
      ++free_;
    }
    cv_.notify_one();
  }
  void wake_all() { cv_.notify_all(); }
  int busy(int total) {
    std::lock_guard lk(mu_);
    return total - free_;
  }
  int waiting() {
    std::lock_guard lk(mu_);
    return waiting_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int free_, waiting_ = 0, max_waiting_;
};

struct Settings {
  std::string model_path, model_id, host = "127.0.0.1", api_key;
  int port = 8080, parallel = 1, max_queue = 32;
  double queue_timeout = 60;
  int64_t max_body_mb = 32;
  std::string layout = "eval";
};

struct Server;

// A held slot, given back when the last holder (the handler, or a streaming provider) lets go.
struct SlotHold {
  explicit SlotHold(Slots& s) : slots(s) {}
  ~SlotHold() { slots.release(); }
  Slots& slots;
};

struct Server {
  Settings set;
  serve::Limits limits;
  std::unique_ptr<Model> model;
  Slots slots;
  std::atomic<int64_t> served{0};
  const std::time_t started = std::time(nullptr);

  explicit Server(const Settings& s) : set(s), slots(s.parallel, s.max_queue) {}

  bool can_draw() const { return model->head != nullptr; }

  void check_model(const std::string& name) const {
    if (name != set.model_id)
      throw HttpError(404, "the model '" + name + "' does not exist; this server serves '" + set.model_id + "'",
                      "model", "model_not_found");
  }

  std::shared_ptr<SlotHold> take_slot() {
    if (!slots.acquire(std::chrono::milliseconds(int64_t(set.queue_timeout * 1000))))
      throw HttpError(503,
                      g_stopping ? "the server is shutting down"
                                 : "the server is busy: all " + std::to_string(set.parallel) +
                                       " slots are taken and the queue is full or the wait ran out; retry later",
                      "", "server_busy");
    return std::make_shared<SlotHold>(slots);
  }
};

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%lx%04lx", prefix, static_cast<unsigned long>(std::time(nullptr)),
                static_cast<unsigned long>(counter.fetch_add(1) & 0xffff));
  return buf;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status();
  if (e.status() == 503) res.set_header("Retry-After", "5");
  res.set_content(serve::error_body(e), "application/json");
}

// Runs a handler, turning what it throws into OpenAI-shaped errors: a refused request (HttpError), an input the
// model cannot take (dl::Error, 400), or a bug (500). The server goes on in every case.
template <class F>
void guarded(httplib::Response& res, F&& f) {
  try {
    f();
  } catch (const HttpError& e) {
    send_error(res, e);
  } catch (const Error& e) {
    send_error(res, HttpError(400, e.what()));
  } catch (const Cancelled&) {
    send_error(res, HttpError(503, "the request was cancelled: the server is shutting down", "", "cancelled"));
  } catch (const std::bad_alloc&) {
    send_error(res, HttpError(500, "out of memory while serving the request", "", "out_of_memory"));
  } catch (const std::exception& e) {
    send_error(res, HttpError(500, std::string("internal error (a bug, please report it): ") + e.what()));
  }
}

DrawOptions draw_options(const std::optional<int64_t>& steps, const std::optional<std::string>& sampler,
                         const std::optional<double>& guidance, const std::string& negative, int64_t width,
                         int64_t height, uint64_t seed) {
  DrawOptions d;  // `create`'s defaults, then the request's
  if (steps) d.steps = *steps;
  if (sampler) d.sampler = *sampler;
  if (guidance) d.cfg_scale = float(*guidance);
  d.negative = negative;
  d.width = width;
  d.height = height;
  d.seed = int64_t(seed & uint64_t(INT64_MAX));
  return d;
}

// A reply that is not streamed, computed while watching the client: cpp-httplib 0.11 tells a handler nothing of a
// closed connection, so the body is sent chunked and `tick` (called at every token and drawing step) writes a space
// before the JSON (JSON allows leading whitespace). A client that left fails that write, and the work stops at
// once instead of holding its slot to the end. The status is then 200 whatever follows; the work is checked before
// it starts, and what fails later (a bug, memory) is sent as an error object in OpenAI's shape.
void respond_watched(httplib::Response& res, std::shared_ptr<SlotHold> slot,
                     std::function<json(const std::function<void()>& tick)> work) {
  res.set_chunked_content_provider("application/json", [slot, work](size_t, httplib::DataSink& sink) {
    const auto tick = [&] {
      if (g_stopping || !sink.is_writable() || !sink.write(" ", 1)) throw Cancelled{};
    };
    std::string body;
    try {
      body = dump(work(tick));
    } catch (const Cancelled&) {
      return false;
    } catch (const std::exception& e) {
      body = serve::error_body(HttpError(dynamic_cast<const Error*>(&e) ? 400 : 500, e.what()));
    }
    const bool sent = sink.write(body.data(), body.size());
    sink.done();
    return sent;
  });
}

// ---- chat -------------------------------------------------------------------------------------------------------

// Streams text while holding back what may be the start of a stop string (OpenAI never sends the stop string).
class StopFilter {
 public:
  StopFilter(std::vector<std::string> stops, std::function<void(const std::string&)> emit)
      : stops_(std::move(stops)), emit_(std::move(emit)) {}
  void push(const std::string& piece) {
    acc_ += piece;
    size_t safe = acc_.size();
    for (const auto& s : stops_) {
      const size_t at = acc_.find(s);
      if (at != std::string::npos) safe = std::min(safe, at);
      for (size_t k = std::min(s.size() - 1, acc_.size()); k > 0; --k)
        if (acc_.compare(acc_.size() - k, k, s, 0, k) == 0) {
          safe = std::min(safe, acc_.size() - k);
          break;
        }
    }
    if (safe > sent_) {
      emit_(acc_.substr(sent_, safe - sent_));
      sent_ = safe;
    }
  }
  // The generation's final text (cut before a stop string): sends what was held back of it.
  void finish(const std::string& final_text) {
    if (final_text.size() > sent_ && final_text.compare(0, sent_, acc_, 0, sent_) == 0)
      emit_(final_text.substr(sent_));
  }

 private:
  std::vector<std::string> stops_;
  std::function<void(const std::string&)> emit_;
  std::string acc_;
  size_t sent_ = 0;
};

struct ChatPrompt {
  std::vector<int32_t> ids;
  Tensor pixels;
};

ChatPrompt chat_prompt(const Server& s, const serve::ChatRequest& r) {
  const Model& m = *s.model;
  const bool train = s.set.layout == "train";
  text::Conversation conv(train ? text::VicunaVariant::Train : text::VicunaVariant::Eval);
  std::string system;
  for (const auto& msg : r.messages) {
    if (msg.role == "system") {
      system += (system.empty() ? "" : "\n") + msg.text;
    } else if (msg.role == "user") {
      std::string t = msg.text;
      // The training layout puts the question on a line after its pictures (LLaVA's "<image>\n"), as `ask
      // --template train` does.
      if (train)
        for (size_t at = t.find(text::kImageToken); at != std::string::npos; at = t.find(text::kImageToken, at + 1)) {
          const size_t end = at + text::kImageToken.size();
          if (end < t.size() && t[end] != '\n' && t.compare(end, text::kImageToken.size(), text::kImageToken) != 0)
            t.insert(end, "\n");
        }
      conv.append_user(place_images(m, t, msg.images));
    } else {
      conv.append_assistant(msg.text);
    }
  }
  if (!system.empty()) conv.set_system(system);
  conv.append_assistant(std::nullopt);
  ChatPrompt p;
  p.ids = m.tokenizer.encode(conv.generation_prompt());
  const int64_t limit = m.dir.config().llm.max_position_embeddings;
  if (int64_t(p.ids.size()) >= limit)
    throw HttpError(400,
                    "the prompt has " + std::to_string(p.ids.size()) + " tokens; the model's context holds " +
                        std::to_string(limit) + " (shorten the messages or send fewer images)",
                    "messages", "context_length_exceeded");
  if (!r.images.empty()) {
    m.llm.require_vision("an image_url part");
    std::vector<Tensor> px;
    for (const auto& img : r.images) {
      const Tensor t = io::clip_preprocess(img, m.clip_preprocess);
      px.push_back(t.reshape({1, t.size(0), t.size(1), t.size(2)}));
    }
    p.pixels = ops::concat(px, 0);
  }
  return p;
}

const char* openai_finish(pipelines::FinishReason f) {
  return f == pipelines::FinishReason::kLength ? "length" : "stop";
}

// One chat answer: what `dreamllm ask` does for the same prompt and options (choice i samples with seed + i).
struct Answer {
  std::string text;
  std::vector<std::string> pictures;  // PNG data URIs, in order
  int64_t tokens = 0;
  const char* finish = "stop";
};

// `on_event` receives the drawing's events (image_begin, progress, image) for a stream; may be empty.
Answer chat_answer(const Server& s, const serve::ChatRequest& r, const ChatPrompt& p, int64_t choice,
                   const std::function<bool()>& alive, const std::function<void(const std::string&)>& on_text,
                   const std::function<void(const json&)>& on_event = {}) {
  const Model& m = *s.model;
  const int64_t limit = m.dir.config().llm.max_position_embeddings;
  TextOptions opt;  // ask's defaults, then the request's
  opt.temperature = r.temperature;
  opt.top_p = r.top_p;
  if (r.max_tokens) opt.max_tokens = *r.max_tokens;
  opt.seed = int64_t(r.seed + uint64_t(choice));
  pipelines::GenerationConfig gc = opt.config(m.tokenizer.eos_id());
  gc.max_new_tokens = std::min<int64_t>(gc.max_new_tokens, limit - int64_t(p.ids.size()));
  gc.stop_strings = r.stop;
  Answer a;
  StopFilter filter(r.stop, [&](const std::string& t) {
    a.text += t;
    on_text(t);
  });
  // An answer that may draw runs as `dreamllm write` runs a document (pipelines::write_document): the same text as
  // `ask` until the model emits <dream_start>, then the picture, read back, and the answer goes on. Stop strings
  // need the tokens' text as generation goes, which that loop does not offer: with them the answer only writes.
  const int64_t max_images = r.max_images ? *r.max_images : 4;
  if (s.can_draw() && r.draw && max_images > 0 && r.stop.empty()) {
    const DrawOptions draw =
        draw_options(r.steps, r.sampler, r.guidance, r.negative_prompt, r.width, r.height, r.image_seed);
    const auto latent = draw.latent_size(m.dir);
    pipelines::WriteOptions o;
    o.text = gc;
    o.drawing = draw.sampling();
    o.latent_height = latent.first;
    o.latent_width = latent.second;
    o.max_images = max_images;
    o.negative_ids = m.tokenizer.encode(draw.negative);
    o.seed = r.image_seed + uint64_t(choice);
    pipelines::WriteEvents ev;
    ev.on_text = [&](const std::string& t) {
      if (!alive()) throw Cancelled{};
      filter.push(t);
    };
    ev.on_image_begin = [&](size_t) {
      if (on_event) on_event({{"type", "image_begin"}});
    };
    ev.on_diffusion_step = [&](size_t step, size_t steps) {
      if (!alive()) throw Cancelled{};
      if (on_event) on_event({{"type", "progress"}, {"step", step}, {"steps", steps}});
    };
    ev.on_image = [&](size_t, const io::Image& picture) {
      a.pictures.push_back(serve::png_data_uri(picture));
      if (on_event) on_event({{"type", "image"}, {"url", a.pictures.back()}});
    };
    const pipelines::Document doc = pipelines::write_document(m.llm, *m.head, m.tokenizer, m.clip_preprocess, p.ids,
                                                              p.pixels, o, ev);
    a.tokens = int64_t(doc.ids.size() - doc.prompt_length);
    a.finish = openai_finish(doc.finish);
    return a;
  }
  pipelines::TextStream stream(m.tokenizer, [&](const std::string& piece) { filter.push(piece); });
  pipelines::GenerationCallbacks cb;
  cb.decode = [&](const std::vector<int32_t>& t) { return m.tokenizer.decode(t); };
  cb.on_token = [&](int64_t, int32_t tok) {
    if (!alive()) throw Cancelled{};
    stream.push(tok);
  };
  const auto res = pipelines::generate_text(m.llm, {p.ids}, p.pixels, gc, cb);
  if (!r.stop.empty()) filter.finish(res.texts[0]);
  a.tokens = int64_t(res.tokens[0].size());
  a.finish = openai_finish(res.finish_reasons[0]);
  return a;
}

void handle_chat(Server& s, const std::string& body, httplib::Response& res) {
  const serve::ChatRequest r = serve::parse_chat_request(body, s.limits);
  s.check_model(r.model);
  ChatPrompt p = chat_prompt(s, r);
  // The last message, as `chat` checks a line against the model's declared prompt language.
  std::string said = r.messages.back().text;
  for (size_t at = said.find(text::kImageToken); at != std::string::npos; at = said.find(text::kImageToken))
    said.erase(at, text::kImageToken.size());
  world::require_prompt_language(s.set.model_path, world::PromptUse::Chat, said, r.force);
  auto slot = s.take_slot();
  const std::string id = random_id("chatcmpl");
  const int64_t created = int64_t(std::time(nullptr));
  const std::string model_id = s.set.model_id;
  auto shared = std::make_shared<std::pair<serve::ChatRequest, ChatPrompt>>(r, std::move(p));
  if (!r.stream) {
    respond_watched(res, slot, [&s, shared, id, created, model_id](const std::function<void()>& tick) {
      const serve::ChatRequest& r = shared->first;
      const ChatPrompt& p = shared->second;
      json choices = json::array();
      int64_t completion = 0;
      for (int64_t i = 0; i < r.n; ++i) {
        const Answer a = chat_answer(
            s, r, p, i,
            [&] {
              tick();
              return true;
            },
            [](const std::string&) {}, [&](const json&) { tick(); });
        completion += a.tokens;
        json message = {{"role", "assistant"}, {"content", a.text}};
        if (!a.pictures.empty()) {
          json parts = json::array({{{"type", "text"}, {"text", a.text}}});
          for (const auto& uri : a.pictures) parts.push_back({{"type", "image_url"}, {"image_url", {{"url", uri}}}});
          message["content"] = parts;
        }
        choices.push_back({{"index", i}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", a.finish}});
      }
      const int64_t prompt_tokens = int64_t(p.ids.size());
      return json{{"id", id},
                  {"object", "chat.completion"},
                  {"created", created},
                  {"model", model_id},
                  {"choices", choices},
                  {"usage",
                   {{"prompt_tokens", prompt_tokens},
                    {"completion_tokens", completion},
                    {"total_tokens", prompt_tokens + completion}}}};
    });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [&s, shared, slot, id, created, model_id](size_t, httplib::DataSink& sink) {
        const serve::ChatRequest& r = shared->first;
        const ChatPrompt& p = shared->second;
        bool open = true;
        auto send = [&](const json& j) {
          if (!open) return;
          const std::string ev = serve::sse(dump(j));
          open = sink.is_writable() && sink.write(ev.data(), ev.size());
        };
        auto chunk = [&](int64_t index, const json& delta, const json& finish) {
          send({{"id", id},
                {"object", "chat.completion.chunk"},
                {"created", created},
                {"model", model_id},
                {"choices", json::array({{{"index", index}, {"delta", delta}, {"logprobs", nullptr},
                                          {"finish_reason", finish}}})}});
        };
        int64_t completion = 0;
        try {
          for (int64_t i = 0; i < r.n; ++i) {
            chunk(i, {{"role", "assistant"}, {"content", ""}}, nullptr);
            // A picture travels as a content part with a data URI (our extension); its progress as
            // "dreamllm" deltas, which OpenAI's clients pass through untouched.
            const Answer a = chat_answer(
                s, r, p, i, [&] { return open && !g_stopping.load(); },
                [&](const std::string& t) { chunk(i, {{"content", t}}, nullptr); },
                [&](const json& e) {
                  if (e["type"] == "image")
                    chunk(i, {{"content", json::array({{{"type", "image_url"}, {"image_url", {{"url", e["url"]}}}}})}},
                          nullptr);
                  else
                    chunk(i, {{"dreamllm", e}}, nullptr);
                });
            completion += a.tokens;
            chunk(i, json::object(), a.finish);
          }
        } catch (const Cancelled&) {
          return false;  // the client left or the server stops: close the connection
        } catch (const std::exception& e) {
          // The status line is gone; the error travels as an event in OpenAI's shape.
          const int status = dynamic_cast<const Error*>(&e) ? 400 : 500;
          send(json::parse(serve::error_body(HttpError(status, e.what()))));
          sink.done();
          return true;
        }
        if (r.include_usage) {
          const int64_t prompt_tokens = int64_t(p.ids.size());
          send({{"id", id},
                {"object", "chat.completion.chunk"},
                {"created", created},
                {"model", model_id},
                {"choices", json::array()},
                {"usage",
                 {{"prompt_tokens", prompt_tokens},
                  {"completion_tokens", completion},
                  {"total_tokens", prompt_tokens + completion}}}});
        }
        const std::string done = "data: [DONE]\n\n";
        if (open) open = sink.write(done.data(), done.size());
        sink.done();
        return open;
      });
}

// ---- images -----------------------------------------------------------------------------------------------------

void handle_images(Server& s, const std::string& body, httplib::Response& res) {
  const serve::ImageRequest r = serve::parse_image_request(body, s.limits);
  s.check_model(r.model);
  if (!s.can_draw()) throw HttpError(400, "the model '" + s.set.model_id + "' cannot draw images", "model");
  world::require_prompt_language(s.set.model_path, world::PromptUse::Create, r.prompt, r.force);  // as `create`
  const DrawOptions draw = draw_options(r.steps, r.sampler, r.guidance, r.negative_prompt, r.width, r.height, r.seed);
  const auto latent = draw.latent_size(s.model->dir);  // sizes, memory and steps, as `create` checks them
  const Model& m = *s.model;
  auto request = std::make_shared<pipelines::CreateRequest>();
  request->prompt_ids = m.tokenizer.encode(r.prompt);
  const int64_t limit = m.dir.config().llm.max_position_embeddings;
  if (int64_t(request->prompt_ids.size()) + m.llm.dream_queries() + 2 > limit)
    throw HttpError(400,
                    "the prompt has " + std::to_string(request->prompt_ids.size()) +
                        " tokens; with the dream queries the model's context holds " + std::to_string(limit),
                    "prompt", "context_length_exceeded");
  if (draw.cfg_scale > 1.f) request->negative_ids = m.tokenizer.encode(draw.negative);
  request->sampling = draw.sampling();
  request->latent_height = latent.first;
  request->latent_width = latent.second;
  request->seed = r.seed;
  request->count = r.n;
  auto slot = s.take_slot();
  const int64_t created = int64_t(std::time(nullptr));
  if (!r.stream) {
    respond_watched(res, slot, [&s, request, created](const std::function<void()>& tick) {
      json data = json::array();
      pipelines::CreateEvents ev;
      ev.on_step = [&](size_t, size_t, size_t) { tick(); };
      ev.on_image = [&](size_t, const io::Image& picture) {
        data.push_back({{"b64_json", serve::base64_encode(io::encode_png(picture))}});
      };
      pipelines::create_images(s.model->llm, *s.model->head, *request, ev);
      return json{{"created", created}, {"data", data}};
    });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [&s, request, slot, created](size_t, httplib::DataSink& sink) {
    bool open = true;
    auto send = [&](const json& j) {
      if (!open) return;
      const std::string ev = serve::sse(dump(j));
      open = sink.is_writable() && sink.write(ev.data(), ev.size());
    };
    pipelines::CreateEvents ev;
    ev.on_step = [&](size_t k, size_t step, size_t steps) {
      send({{"type", "image_generation.progress"}, {"index", k}, {"step", step}, {"steps", steps}});
      if (!open || g_stopping) throw Cancelled{};
    };
    ev.on_image = [&](size_t k, const io::Image& picture) {
      send({{"type", "image_generation.completed"},
            {"index", k},
            {"created", created},
            {"b64_json", serve::base64_encode(io::encode_png(picture))}});
    };
    try {
      pipelines::create_images(s.model->llm, *s.model->head, *request, ev);
    } catch (const Cancelled&) {
      return false;
    } catch (const std::exception& e) {
      send(json::parse(serve::error_body(HttpError(dynamic_cast<const Error*>(&e) ? 400 : 500, e.what()))));
    }
    const std::string done = "data: [DONE]\n\n";
    if (open) open = sink.write(done.data(), done.size());
    sink.done();
    return open;
  });
}

// ---- documents --------------------------------------------------------------------------------------------------

void handle_documents(Server& s, const std::string& body, httplib::Response& res) {
  const serve::DocumentRequest r = serve::parse_document_request(body, s.limits);
  s.check_model(r.model);
  if (!s.can_draw()) throw HttpError(400, "the model '" + s.set.model_id + "' cannot draw images", "model");
  const Model& m = *s.model;
  world::require_prompt_language(s.set.model_path, r.raw ? world::PromptUse::Document : world::PromptUse::Write,
                                 r.prompt, r.force);  // as `write`
  const DrawOptions draw = draw_options(r.steps, r.sampler, r.guidance, r.negative_prompt, r.width, r.height, r.seed);
  const auto latent = draw.latent_size(m.dir);
  // The prompt as `dreamllm write` builds it: the SFT data's template unless raw.
  std::string prompt_text = r.prompt;
  if (!r.raw) {
    text::Conversation conv(text::VicunaVariant::Train);
    if (!r.system.empty()) conv.set_system(r.system);
    conv.append_user(prompt_text);
    conv.append_assistant(std::nullopt);
    prompt_text = conv.generation_prompt();
  }
  auto prompt = std::make_shared<std::vector<int32_t>>(m.tokenizer.encode(prompt_text));
  const int64_t limit = m.dir.config().llm.max_position_embeddings;
  if (int64_t(prompt->size()) >= limit)
    throw HttpError(400,
                    "the prompt has " + std::to_string(prompt->size()) + " tokens; the model's context holds " +
                        std::to_string(limit),
                    "prompt", "context_length_exceeded");
  TextOptions text;
  text.max_tokens = r.max_tokens;
  text.temperature = r.temperature;
  text.top_p = r.top_p;
  text.seed = int64_t(r.text_seed & uint64_t(INT64_MAX));
  auto o = std::make_shared<pipelines::WriteOptions>();
  o->text = text.config(m.tokenizer.eos_id());
  if (r.image_bias != 0.0)
    o->text.logit_bias.emplace_back(m.tokenizer.token_id(text::kDreamStartToken), float(r.image_bias));
  o->drawing = draw.sampling();
  o->latent_height = latent.first;
  o->latent_width = latent.second;
  o->max_images = r.max_images;
  o->negative_ids = m.tokenizer.encode(draw.negative);
  o->seed = r.seed;
  auto slot = s.take_slot();
  auto run = [&s, prompt, o](const pipelines::WriteEvents& ev) {
    return pipelines::write_document(s.model->llm, *s.model->head, s.model->tokenizer, s.model->clip_preprocess,
                                     *prompt, Tensor(), *o, ev);
  };
  if (!r.stream) {
    const std::string model_id = s.set.model_id;
    respond_watched(res, slot, [run, model_id](const std::function<void()>& tick) {
      pipelines::WriteEvents ev;
      ev.on_text = [&](const std::string&) { tick(); };
      ev.on_diffusion_step = [&](size_t, size_t) { tick(); };
      const pipelines::Document doc = run(ev);
      json blocks = json::array();
      for (const auto& b : doc.blocks)
        blocks.push_back(b.is_image ? json{{"type", "image"}, {"url", serve::png_data_uri(b.image)}}
                                    : json{{"type", "text"}, {"text", b.text}});
      return json{{"object", "document"},
                  {"model", model_id},
                  {"blocks", blocks},
                  {"finish_reason", pipelines::finish_reason_name(doc.finish)}};
    });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [run, slot](size_t, httplib::DataSink& sink) {
    bool open = true;
    auto send = [&](const json& j) {
      if (!open) return;
      const std::string ev = serve::sse(dump(j));
      open = sink.is_writable() && sink.write(ev.data(), ev.size());
    };
    auto check = [&] {
      if (!open || g_stopping) throw Cancelled{};
    };
    pipelines::WriteEvents ev;
    ev.on_text = [&](const std::string& t) {
      send({{"type", "text"}, {"text", t}});
      check();
    };
    ev.on_image_begin = [&](size_t i) { send({{"type", "image_begin"}, {"index", i}}); };
    ev.on_diffusion_step = [&](size_t step, size_t steps) {
      send({{"type", "progress"}, {"step", step}, {"steps", steps}});
      check();
    };
    ev.on_image = [&](size_t i, const io::Image& picture) {
      send({{"type", "image"}, {"index", i}, {"url", serve::png_data_uri(picture)}});
    };
    try {
      const pipelines::Document doc = run(ev);
      size_t images = 0;
      for (const auto& b : doc.blocks) images += b.is_image;
      send({{"type", "done"}, {"finish_reason", pipelines::finish_reason_name(doc.finish)}, {"images", images}});
    } catch (const Cancelled&) {
      return false;
    } catch (const std::exception& e) {
      send(json::parse(serve::error_body(HttpError(dynamic_cast<const Error*>(&e) ? 400 : 500, e.what()))));
    }
    const std::string done = "data: [DONE]\n\n";
    if (open) open = sink.write(done.data(), done.size());
    sink.done();
    return open;
  });
}

std::string model_id_of(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::string name = p.filename().string();
  if (name.size() > 5 && name.ends_with(".gguf")) name.resize(name.size() - 5);
  return name.empty() ? "dreamllm" : name;
}

}  // namespace

int serve_main(int argc, char** argv) {
  CLI::App app("Serve a model over HTTP: OpenAI-compatible chat and images, interleaved documents, a web page.",
               "serve");
  Settings set;
  int threads = 0;
  app.add_option("-m,--model", set.model_path, "model directory (official DreamLLM release layout) or NAME.gguf")
      ->required();
  app.add_option("--host", set.host, "address to listen on (127.0.0.1: this machine only)")->capture_default_str();
  app.add_option("--port", set.port, "port (0: any free one, printed at start)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--api-key", set.api_key, "require 'Authorization: Bearer KEY' on /v1/ routes");
  app.add_option("--alias", set.model_id, "the model's name in requests (default: the model's file or directory name)");
  app.add_option("--parallel", set.parallel, "requests worked on at once (each its own slot)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--max-queue", set.max_queue, "requests that may wait for a slot; more get 503")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  app.add_option("--queue-timeout", set.queue_timeout, "seconds a request may wait for a slot before 503")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--max-body-mb", set.max_body_mb, "largest request body in MiB (413 past it)")
      ->check(CLI::Range(int64_t(1), int64_t(1024)))
      ->capture_default_str();
  app.add_option("--template", set.layout,
                 "chat prompt layout, as `ask --template`: eval (the original VQA evaluation's) or train (the "
                 "training conversations', for models that only saw that one, such as the shapes world's)")
      ->check(CLI::IsMember({"eval", "train"}))
      ->capture_default_str();
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  add_kv_cache_options(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  if (set.model_id.empty()) set.model_id = model_id_of(set.model_path);

  // SIGINT/SIGTERM are taken by one thread (sigwait), never by a handler interrupting work: blocked here, before
  // any other thread exists, so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that left is a failed write, not the end of the server
  set_num_threads(threads);

  Server s(set);
  s.limits.max_body_bytes = size_t(set.max_body_mb) << 20;
  httplib::Server http;
  // cpp-httplib sets SO_REUSEPORT, with which a second server on the same port starts and the kernel shares the
  // connections between both: only SO_REUSEADDR (a restart may bind while old connections linger), so a port in use
  // is an error.
  http.set_socket_options([](auto sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  // Bound before the model is read, so a port in use is reported at once.
  int port = set.port;
  if (port == 0) {
    port = http.bind_to_any_port(set.host);
    DL_CHECK(port > 0, "cannot listen on ", set.host, " (any port)");
  } else {
    DL_CHECK(http.bind_to_port(set.host, port), "cannot listen on ", set.host, ":", port,
             " (in use, or not an address of this machine)");
  }
  // The waiter stops the listening loop once it runs; a signal before it starts keeps it from starting.
  std::mutex listen_mu;
  bool listening = false;
  std::atomic<bool> listen_returned{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    bool started = false;
    {
      std::lock_guard lk(listen_mu);
      g_stopping = true;
      started = listening;
    }
    s.slots.wake_all();
    if (!started) return;
    while (!http.is_running() && !listen_returned) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http.stop();
  });
  // A start that fails (a model that does not load) leaves the waiter in sigwait: let it go with the process
  // instead of destroying a joinable thread.
  struct DetachOnThrow {
    std::thread& t;
    ~DetachOnThrow() {
      if (t.joinable()) t.detach();
    }
  } detach_on_throw{waiter};

  const std::string mp = set.model_path;
  const bool draws = [&] {
    const io::ModelDir dir = open_model_dir(mp);
    return dir.has(io::kDream) && dir.has(io::kConditionProjector) && dir.has(io::kDiffusion);
  }();
  s.model = std::make_unique<Model>(mp, draws);

  // Threads for connections: every slot and every queued request holds one, and keep-alive clients hold theirs
  // between requests.
  const size_t conn_threads = size_t(std::max(16, set.parallel + set.max_queue + 16));
  http.new_task_queue = [conn_threads] { return new httplib::ThreadPool(conn_threads); };
  http.set_payload_max_length(s.limits.max_body_bytes);
  http.set_keep_alive_timeout(5);
  http.set_read_timeout(30);
  http.set_write_timeout(30);

  http.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (!set.api_key.empty() && req.path.rfind("/v1/", 0) == 0 &&
        serve::bearer_token(req.get_header_value("Authorization")) != set.api_key) {
      send_error(res, HttpError(401, "incorrect or missing API key: send 'Authorization: Bearer KEY'", "",
                                "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Statuses cpp-httplib sets itself (no route, a body over the limit, a malformed request line) get a body in
  // OpenAI's shape too.
  http.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    switch (res.status) {
      case 404:
        send_error(res, HttpError(404, "no route " + req.method + " " + req.path, "", "not_found"));
        break;
      case 413:
        send_error(res, HttpError(413,
                                  "the request body is larger than " + std::to_string(set.max_body_mb) +
                                      " MiB, the most this server reads (--max-body-mb)",
                                  "", "request_too_large"));
        break;
      default:
        send_error(res, HttpError(res.status, "the request could not be served (HTTP " +
                                                  std::to_string(res.status) + ")"));
    }
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, HttpError(500, "internal error (a bug, please report it)"));
  });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kWebPage, "text/html; charset=utf-8");
  });
  http.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump({{"status", g_stopping ? "stopping" : "ok"},
                          {"model", set.model_id},
                          {"slots", set.parallel},
                          {"slots_busy", s.slots.busy(set.parallel)},
                          {"queued", s.slots.waiting()},
                          {"can_draw", s.can_draw()}}),
                    "application/json");
  });
  http.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump({{"object", "list"},
                          {"data", json::array({{{"id", set.model_id},
                                                 {"object", "model"},
                                                 {"created", int64_t(s.started)},
                                                 {"owned_by", "dreamllm.cpp"}}})}}),
                    "application/json");
  });
  http.Get(R"(/v1/models/(.+))", [&](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      s.check_model(req.matches[1]);
      res.set_content(dump({{"id", set.model_id},
                            {"object", "model"},
                            {"created", int64_t(s.started)},
                            {"owned_by", "dreamllm.cpp"}}),
                      "application/json");
    });
  });
  // POST bodies are read by the handlers themselves (a content reader): cpp-httplib would otherwise parse a body
  // sent as application/x-www-form-urlencoded (curl -d's default) as a form, with its own 8 KiB limit.
  auto post = [&](const char* path, void (*handler)(Server&, const std::string&, httplib::Response&)) {
    http.Post(path, [&s, &set, handler](const httplib::Request&, httplib::Response& res,
                                        const httplib::ContentReader& reader) {
      std::string body;
      const bool read = reader([&](const char* data, size_t n) {
        body.append(data, n);
        return true;
      });
      if (!read) {
        if (res.status == 413 || body.size() >= s.limits.max_body_bytes)
          send_error(res, HttpError(413,
                                    "the request body is larger than " + std::to_string(set.max_body_mb) +
                                        " MiB, the most this server reads (--max-body-mb)",
                                    "", "request_too_large"));
        else
          send_error(res, HttpError(400, "the request body could not be read", "", "bad_body"));
        return;
      }
      guarded(res, [&] { handler(s, body, res); });
    });
  };
  post("/v1/chat/completions", handle_chat);
  post("/v1/images/generations", handle_images);
  post("/v1/documents", handle_documents);

  {
    std::lock_guard lk(listen_mu);
    listening = !g_stopping;
  }
  if (listening) {
    std::fprintf(stderr, "dreamllm serve: %s on http://%s:%d (%d slot%s%s)\n", set.model_id.c_str(),
                 set.host.c_str(), port, set.parallel, set.parallel == 1 ? "" : "s",
                 s.can_draw() ? ", draws" : ", text only");
    // The port line on stdout, flushed: tests and scripts that asked for --port 0 read it.
    std::printf("listening %s:%d\n", set.host.c_str(), port);
    std::fflush(stdout);
    http.listen_after_bind();
    listen_returned = true;
  }
  // After a signal the waiter has stopped the server (or is about to return): wait for it. Without one it still
  // sits in sigwait, and the process ends around it.
  if (g_stopping)
    waiter.join();
  else
    waiter.detach();
  std::fprintf(stderr, "dreamllm serve: stopped\n");
  return 0;
}

}  // namespace dl::app
