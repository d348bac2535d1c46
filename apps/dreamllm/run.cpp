// `dreamllm run COMPONENT --model PATH --in inputs.safetensors --out outputs.safetensors [--threads N]`: the
// tensor-file interface of design.md section 3, for parity checks against any reference implementation.
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "nn/autograd.h"
#include "output_check.h"
#include "pipelines/create.h"
#include "train/loss.h"

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
      "  clip   pixel_values [N,3,S,S] -> clip_features [N,P,Dv], image_embeds [N,P,D]\n"
      "  unet   sample [B,4,h,w], timestep [B] (or [1]), encoder_hidden_states [B,S,C] -> eps [B,4,h,w]\n"
      "  vae_decode  latents [B,4,h,w] as the sampler produces them (divided by the scaling factor here)\n"
      "         -> image [B,3,H,W] (decoder output before clamping)\n"
      "  vae_encode  image [B,3,H,W] in [-1,1] -> mean, logvar [B,4,h,w] (unscaled)\n"
      "  txt2img  input_ids [B,T], optional attention_mask [B,T] (right padding), optional negative_input_ids\n"
      "         [B,T'] and negative_attention_mask (default: [BOS]), noise [B,4,h,w], step_noise [S,B,4,h,w]\n"
      "         (stochastic samplers), steps I32 [1], guidance_scale [1]; optional pixel_values for <im_start>\n"
      "         spans in the prompt -> latents [B,4,h,w], image [B,3,H,W] in [0,1], conditions [B,Q,C],\n"
      "         negative_conditions [B,Q,C]\n"
      "  loss   input_ids [B,T], labels [B,T] (-100 ignored), optional attention_mask [B,T], optional\n"
      "         pixel_values [N,3,S,S], optional dm_latents [M,4,h,w] (scaled x0, one per <dream_start> span in\n"
      "         order) with noise [M,4,h,w] and timesteps [M] (integers) -> loss, lm_loss, vm_loss [1]; with\n"
      "         --grads also grad/NAME for each named parameter (frozen ones too)\n"
      "\n"
      "txt2img options:\n"
      "  --sampler NAME       ddpm (default, as the original), ddim, pndm, dpmpp2m, euler, euler_a\n"
      "  --eta X              DDIM eta (default 0)\n"
      "  --karras             Karras sigmas for dpmpp2m\n"
      "  --guidance-rescale X diffusers' guidance rescale in [0, 1] (default 0)\n"
      "  --tiled              decode the VAE in tiles (bounded memory for large images)\n"
      "\n"
      "loss options:\n"
      "  --grads NAME,...     parameters to return gradients of (full state-dict names, see design.md); 'all'\n"
      "                       names every parameter of the LLM, vision tower, dream queries, projectors and UNet\n"
      "  --lm-weight X        weight of the LM term (default: the config's loss_weight_lm)\n"
      "  --vm-weight X        weight of the diffusion term (default: the config's loss_weight_vm)\n");
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

double parse_number(const std::string& s, const char* option) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  DL_CHECK(used == s.size() && !s.empty() && std::isfinite(v), "option ", option, " needs a number, got '", s, "'");
  return v;
}
float parse_float(const std::string& s, const char* option) { return float(parse_number(s, option)); }
int64_t parse_int(const std::string& s, const char* option) {
  const double v = parse_number(s, option);
  DL_CHECK(v == std::floor(v) && std::fabs(v) < 1e9, "option ", option, " needs an integer, got '", s, "'");
  return int64_t(v);
}

float scalar(const Tensor& t, const char* name) {
  DL_CHECK(t.numel() == 1, "'", name, "' must hold one value, got ", t.describe());
  return t.to(DType::F32).to_vector()[0];
}

std::map<std::string, Tensor> txt2img(const io::ModelDir& dir, const std::map<std::string, Tensor>& in,
                                      pipelines::SamplingOptions sampling, bool tiled) {
  const std::string c = "txt2img";
  const models::DreamLLM m = models::DreamLLM::load(dir);
  const pipelines::DiffusionHead head(dir);
  const Tensor ids = ids_tensor(require(in, "input_ids", c), "input_ids");
  DL_CHECK(ids.dim() == 2, "'input_ids' must be [B, T], got ", ids.describe());
  const int64_t B = ids.size(0);
  Tensor mask = optional(in, "attention_mask");
  if (mask.defined()) mask = float_tensor(mask, "attention_mask");
  Tensor pixels = optional(in, "pixel_values");
  if (pixels.defined()) pixels = float_tensor(pixels, "pixel_values");
  const Tensor noise = float_tensor(require(in, "noise", c), "noise").contiguous();
  const float steps = scalar(require(in, "steps", c), "steps");
  DL_CHECK(steps == std::floor(steps) && steps >= 1.f && steps <= 1e6f, "'steps' must be a positive integer, got ",
           steps);
  sampling.steps = int64_t(steps);
  sampling.guidance_scale = scalar(require(in, "guidance_scale", c), "guidance_scale");
  const Tensor cond = pipelines::prompt_conditions(m, ids, mask, pixels);
  Tensor uncond;
  if (sampling.guidance_scale > 1.f) {
    Tensor neg = optional(in, "negative_input_ids");
    Tensor neg_mask;
    if (neg.defined()) {
      neg = ids_tensor(neg, "negative_input_ids");
      DL_CHECK(neg.dim() == 2 && neg.size(0) == B, "'negative_input_ids' must be [", B, ", T'], got ",
               neg.describe());
      neg_mask = optional(in, "negative_attention_mask");
      if (neg_mask.defined()) neg_mask = float_tensor(neg_mask, "negative_attention_mask");
    } else {  // the empty negative prompt: tokenizer("") is just BOS
      const int64_t bos = m.config().token_id("<s>");
      neg = Tensor::from_vector_i64(std::vector<int64_t>(size_t(B), bos), {B, 1});
    }
    uncond = pipelines::prompt_conditions(m, neg, neg_mask);
  }
  const Tensor step_noise = optional(in, "step_noise");
  pipelines::StepNoise draw = [&](size_t i) {
    DL_CHECK(step_noise.defined(), "the ", sampling.scheduler, " sampler is stochastic: 'step_noise' [S,B,4,h,w] is ",
             "required");
    DL_CHECK(step_noise.dim() == 5 && int64_t(i) < step_noise.size(0) &&
                 Shape(step_noise.shape().begin() + 1, step_noise.shape().end()) == noise.shape(),
             "'step_noise' ", step_noise.describe(), " is not [", sampling.steps, ", ", noise.describe(),
             " dims] for step ", i);
    return step_noise.select(0, int64_t(i)).to(DType::F32).contiguous();
  };
  const Tensor latents = pipelines::sample_latents(head.unet, head.scheduler, cond, uncond, noise, sampling, draw);
  std::map<std::string, Tensor> out;
  out["latents"] = latents;
  out["image"] = pipelines::decode_latents(head.vae, latents, tiled);
  out["conditions"] = cond;
  if (uncond.defined()) out["negative_conditions"] = uncond;
  return out;
}

std::map<std::string, Tensor> loss(const io::ModelDir& dir, const std::map<std::string, Tensor>& in,
                                   const std::string& grads, std::optional<float> lm_weight,
                                   std::optional<float> vm_weight) {
  const std::string c = "loss";
  const models::DreamLLM m = models::DreamLLM::load(dir);
  const pipelines::DiffusionHead head(dir);
  train::Batch batch;
  batch.input_ids = ids_tensor(require(in, "input_ids", c), "input_ids");
  batch.labels = ids_tensor(require(in, "labels", c), "labels");
  batch.attention_mask = optional(in, "attention_mask");
  if (batch.attention_mask.defined()) batch.attention_mask = float_tensor(batch.attention_mask, "attention_mask");
  batch.pixel_values = optional(in, "pixel_values");
  if (batch.pixel_values.defined()) batch.pixel_values = float_tensor(batch.pixel_values, "pixel_values");
  batch.dm_latents = optional(in, "dm_latents");
  if (batch.dm_latents.defined()) {
    batch.dm_latents = float_tensor(batch.dm_latents, "dm_latents");
    batch.noise = float_tensor(require(in, "noise", c), "noise");
    const Tensor t = ids_tensor(require(in, "timesteps", c), "timesteps");
    DL_CHECK(t.dim() == 1, "'timesteps' must be [M], got ", t.describe());
    for (int64_t i = 0; i < t.numel(); ++i)
      batch.timesteps.push_back(t.dtype() == DType::I64 ? t.data<int64_t>()[i] : t.data<int32_t>()[i]);
  }
  // The gradient check needs every named parameter as a differentiable leaf, frozen or not.
  std::map<std::string, nn::Var> wanted;
  auto find = [&](const std::string& name) -> nn::Var {
    if (m.parameters().contains(name)) return m.parameters().at(name);
    DL_CHECK(head.params.contains(name), "--grads: no parameter named '", name, "'");
    return head.params.at(name);
  };
  std::vector<std::string> names = split_list(grads);
  if (names.size() == 1 && names[0] == "all") {
    names.clear();
    for (const auto& [n, v] : m.parameters().all()) names.push_back(n);
    for (const auto& [n, v] : head.params.all())
      if (n.rfind("stable_diffusion_head.unet.", 0) == 0) names.push_back(n);
  }
  for (const std::string& n : names) {
    nn::Var v = find(n);
    if (v.value().dtype() != DType::F32) v.set_value(v.value().to(DType::F32));
    v.set_requires_grad(true);
    wanted[n] = v;
  }
  const train::DreamLLMObjective objective(m, head.unet, dir.scheduler_config());
  const train::LossWeights weights{lm_weight.value_or(dir.config().loss_weight_lm),
                                   vm_weight.value_or(dir.config().loss_weight_vm)};
  const train::LossTerms r = objective(batch, weights);
  std::map<std::string, Tensor> out;
  out["loss"] = r.loss.value().reshape({1});
  out["lm_loss"] = Tensor::from_vector({r.lm_loss}, {1});
  out["vm_loss"] = Tensor::from_vector({r.vm_loss}, {1});
  if (!wanted.empty() && r.loss.requires_grad()) r.loss.backward();
  for (const auto& [n, v] : wanted) out["grad/" + n] = v.grad().defined() ? v.grad() : Tensor::zeros(v.shape());
  return out;
}

}  // namespace

int run_main(int argc, char** argv) {
  std::string component, model, in_path, out_path;
  int threads = 0;
  pipelines::SamplingOptions sampling;
  sampling.scheduler = "ddpm";  // run reproduces the original's pipeline, so its DDPM rather than the commands' default
  bool tiled = false;
  std::string grads;
  std::optional<float> lm_weight, vm_weight;
  // Usage (unknown options and components, missing or malformed values) exits 2, as CLI11's commands do.
  const auto parse = [&]() -> bool {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        DL_CHECK(i + 1 < argc, "option ", a, " needs a value");
        return argv[++i];
      };
      if (a == "--help" || a == "-h") {
        usage();
        return false;
      } else if (a == "--model" || a == "-m") {
        model = next();
      } else if (a == "--in") {
        in_path = next();
      } else if (a == "--out") {
        out_path = next();
      } else if (a == "--threads" || a == "-t") {
        threads = int(parse_int(next(), "--threads"));
      } else if (a == "--sampler" || a == "--scheduler") {  // --scheduler: the earlier name
        sampling.scheduler = next();
        const std::set<std::string> samplers = {"ddpm", "ddim", "pndm", "dpmpp2m", "euler", "euler_a"};
        DL_CHECK(samplers.count(sampling.scheduler), "unknown sampler '", sampling.scheduler,
                 "' (ddpm, ddim, pndm, dpmpp2m, euler, euler_a)");
      } else if (a == "--eta") {
        sampling.scheduler_options.eta = parse_float(next(), "--eta");
      } else if (a == "--karras") {
        sampling.scheduler_options.use_karras_sigmas = true;
      } else if (a == "--guidance-rescale") {
        sampling.guidance_rescale = parse_float(next(), "--guidance-rescale");
      } else if (a == "--tiled") {
        tiled = true;
      } else if (a == "--grads") {
        grads = next();
      } else if (a == "--lm-weight") {
        lm_weight = parse_float(next(), "--lm-weight");
      } else if (a == "--vm-weight") {
        vm_weight = parse_float(next(), "--vm-weight");
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
    DL_CHECK(threads >= 0 && threads <= max_threads(), "--threads ", threads, " is outside 0..", max_threads(),
             " (this machine's useful maximum)");
    const std::set<std::string> components = {"llm", "clip", "unet", "vae_decode", "vae_encode", "txt2img", "loss"};
    DL_CHECK(components.count(component), "unknown component '", component, "' (see dreamllm run --help)");
    return true;
  };
  try {
    if (!parse()) return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "dreamllm run: %s\n", e.what());
    return 2;
  }
  set_num_threads(threads);
  {
    InputFiles inputs;
    inputs.add(in_path);
    inputs.add_tree(model);
    inputs.check_outputs({out_path});
  }
  // Only the loss records a graph; every other component is inference.
  std::optional<nn::NoGradGuard> inference;
  if (component != "loss") inference.emplace();
  const io::SafetensorsFile in = io::read_safetensors(in_path);
  const io::ModelDir dir = io::ModelDir::open(model);
  // A text-only model has no diffusion head: say so by name rather than as a missing file.
  if (component != "llm" && component != "clip") require_creation(dir, "run " + component);
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
  } else if (component == "unet") {
    const pipelines::DiffusionHead head(dir);
    const Tensor sample = float_tensor(require(in.tensors, "sample", component), "sample");
    const Tensor t = float_tensor(require(in.tensors, "timestep", component), "timestep");
    const Tensor ctx = float_tensor(require(in.tensors, "encoder_hidden_states", component), "encoder_hidden_states");
    out["eps"] = head.unet.forward(nn::Var(sample), t.reshape({t.numel()}), nn::Var(ctx)).value();
  } else if (component == "vae_decode") {
    const pipelines::DiffusionHead head(dir);
    const Tensor z = float_tensor(require(in.tensors, "latents", component), "latents");
    out["image"] = pipelines::decode_latents_unclamped(head.vae, z, tiled);
  } else if (component == "vae_encode") {
    const pipelines::DiffusionHead head(dir);
    const Tensor image = float_tensor(require(in.tensors, "image", component), "image");
    const auto post = head.vae.encode(nn::Var(image));
    out["mean"] = post.mean.value();
    out["logvar"] = post.logvar.value();
  } else if (component == "txt2img") {
    out = txt2img(dir, in.tensors, sampling, tiled);
  } else if (component == "loss") {
    out = loss(dir, in.tensors, grads, lm_weight, vm_weight);
  } else {
    fail("unknown component '", component, "' (see dreamllm run --help)");
  }
  io::write_safetensors(out_path, out);
  return 0;
}

}  // namespace dl::app
