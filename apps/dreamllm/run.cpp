// `dreamllm run COMPONENT --model PATH --in inputs.safetensors --out outputs.safetensors [--threads N]`: the
// tensor-file interface of design.md section 3, for parity checks against any reference implementation.
#include <cstdio>
#include <map>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "nn/autograd.h"

namespace dl::app {

namespace {

void usage() {
  std::printf(
      "usage: dreamllm run COMPONENT --model PATH --in INPUTS.safetensors --out OUTPUTS.safetensors [--threads N]\n"
      "\n"
      "components (inputs -> outputs; F32 unless noted, ids I32 or I64):\n"
      "  llm    input_ids [B,T]; optional attention_mask [B,T] (1 keep, right padding); optional pixel_values\n"
      "         [N,3,S,S] consumed in order by <im_start> spans\n"
      "         -> logits [B,T,V], hidden_states [B,T,D] (after the final norm), dream_conditions [M,Q,C]\n"
      "  clip   pixel_values [N,3,S,S] -> clip_features [N,P,Dv], image_embeds [N,P,D]\n");
}

const Tensor& require(const std::map<std::string, Tensor>& in, const std::string& name, const std::string& component) {
  auto it = in.find(name);
  DL_CHECK(it != in.end(), "run ", component, ": input tensor '", name, "' is missing");
  return it->second;
}

Tensor optional(const std::map<std::string, Tensor>& in, const std::string& name) {
  auto it = in.find(name);
  return it == in.end() ? Tensor() : it->second;
}

Tensor ids_tensor(const Tensor& t, const char* name) {
  DL_CHECK(t.dtype() == DType::I32 || t.dtype() == DType::I64, "'", name, "' must be I32 or I64, got ", t.describe());
  return t.contiguous();
}

Tensor float_tensor(const Tensor& t, const char* name) {
  DL_CHECK(dtype_info(t.dtype()).is_float || t.dtype() == DType::I32 || t.dtype() == DType::I64 ||
               t.dtype() == DType::BOOL || t.dtype() == DType::U8,
           "'", name, "' has unsupported dtype ", dtype_name(t.dtype()));
  return t.to(DType::F32);
}

}  // namespace

int run_main(int argc, char** argv) {
  std::string component, model, in_path, out_path;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      DL_CHECK(i + 1 < argc, "option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else if (a == "--model" || a == "-m") {
      model = next();
    } else if (a == "--in") {
      in_path = next();
    } else if (a == "--out") {
      out_path = next();
    } else if (a == "--threads" || a == "-t") {
      threads = std::stoi(next());
    } else if (!a.empty() && a[0] == '-') {
      fail("unknown option '", a, "' (see dreamllm run --help)");
    } else {
      DL_CHECK(component.empty(), "more than one component given ('", component, "' and '", a, "')");
      component = a;
    }
  }
  DL_CHECK(!component.empty(), "no component given (see dreamllm run --help)");
  DL_CHECK(!model.empty() && !in_path.empty() && !out_path.empty(), "run ", component,
           ": --model, --in and --out are required");
  set_num_threads(threads);
  nn::NoGradGuard inference;
  const io::SafetensorsFile in = io::read_safetensors(in_path);
  const io::ModelDir dir = io::ModelDir::open(model);
  std::map<std::string, Tensor> out;
  if (component == "llm") {
    const models::DreamLLM m = models::DreamLLM::load(dir);
    const Tensor ids = ids_tensor(require(in.tensors, "input_ids", component), "input_ids");
    DL_CHECK(ids.dim() == 2, "'input_ids' must be [B, T], got ", ids.describe());
    Tensor mask = optional(in.tensors, "attention_mask");
    if (mask.defined()) mask = float_tensor(mask, "attention_mask");
    Tensor pixels = optional(in.tensors, "pixel_values");
    if (pixels.defined()) pixels = float_tensor(pixels, "pixel_values");
    const auto r = m.forward(ids, mask, pixels);
    out["logits"] = r.logits.value();
    out["hidden_states"] = r.hidden.value();
    out["dream_conditions"] = r.conditions.defined()
                                  ? r.conditions.value()
                                  : Tensor::empty({0, m.dream_queries(), dir.unet_config().cross_attention_dim});
  } else if (component == "clip") {
    const models::DreamLLM m = models::DreamLLM::load(dir);
    const Tensor pixels = float_tensor(require(in.tensors, "pixel_values", component), "pixel_values");
    const nn::Var px(pixels);
    out["clip_features"] = m.vision().features(px, dir.config().clip_select_layer).value();
    out["image_embeds"] = m.image_embeds(px).value();
  } else {
    fail("unknown component '", component, "' (see dreamllm run --help)");
  }
  io::write_safetensors(out_path, out);
  return 0;
}

}  // namespace dl::app
