#include "diffusion/schedulers.h"

#include <algorithm>
#include <optional>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

// This file is compiled with -ffp-contract=off: diffusers rounds after every tensor op, and a fused multiply-add
// would drift from it by an ulp per step.

namespace dl::diffusion {
namespace {

// The decimal the config was written with (0.00085f -> 0.00085): diffusers computes sqrt(beta) from the Python
// double, and sqrt of the widened float can round to a different float32.
double config_double(float v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

// torch.linspace on CPU in float32, reproduced to the bit as the x86 (AVX2) kernel computes it: the first half
// counts up from start and the second half down from end; whole pairs of 8-lane vectors start from a fused
// multiply-add base and add lane * step, and the leftover tail uses the scalar formula.
std::vector<float> torch_linspace_f32(double start_d, double end_d, int64_t steps) {
  const float start = float(start_d), end = float(end_d);
  std::vector<float> out(static_cast<size_t>(steps));
  if (steps == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / float(steps - 1);
  const int64_t half = steps / 2, lanes = 8, vec_end = steps / (2 * lanes) * (2 * lanes);
  int64_t i = 0;
  for (; i < vec_end; i += lanes) {
    const float base = i < half ? std::fma(step, float(i), start) : std::fma(-step, float(steps - i - 1), end);
    for (int64_t k = 0; k < lanes; ++k) out[size_t(i + k)] = base + float(k) * step;
  }
  for (; i < steps; ++i) out[size_t(i)] = i < half ? start + step * float(i) : end - step * float(steps - i - 1);
  return out;
}

// numpy.linspace(start, stop, num) in float64.
std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> out(static_cast<size_t>(num));
  if (num == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / double(num - 1);
  for (int64_t i = 0; i < num; ++i) out[size_t(i)] = double(i) * step + start;
  out.back() = stop;
  return out;
}

// numpy.arange(start, stop, step) for a negative float step.
std::vector<double> np_arange_down(double start, double stop, double step) {
  const auto len = int64_t(std::ceil((stop - start) / step));
  std::vector<double> out;
  for (int64_t i = 0; i < len; ++i) out.push_back(start + double(i) * step);
  return out;
}

// numpy.interp(x, arange(len(fp)), fp).
double np_interp(double x, const std::vector<float>& fp) {
  const auto last = int64_t(fp.size()) - 1;
  if (!(x > 0)) return fp[0];
  if (x >= double(last)) return fp[size_t(last)];
  const auto j = int64_t(std::floor(x));
  if (x == double(j)) return fp[size_t(j)];
  const double slope = double(fp[size_t(j) + 1]) - double(fp[size_t(j)]);
  return slope * (x - double(j)) + double(fp[size_t(j)]);
}

// numpy.round: half to even.
double np_round(double v) { return std::nearbyint(v); }

// torch.cumprod(1 - betas) on CPU: float32 inputs accumulated in double, each output rounded.
std::vector<float> cumprod_of_alphas(const std::vector<float>& betas) {
  std::vector<float> ac(betas.size());
  double p = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) {
    p *= double(1.f - betas[i]);
    ac[i] = float(p);
  }
  return ac;
}

// diffusers' rescale_zero_terminal_snr, in its float32 order: sqrt(alphas_cumprod) is shifted so that its last
// value is 0 and scaled so that its first is unchanged, then turned back into betas.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  std::vector<float> root = cumprod_of_alphas(betas);
  for (float& v : root) v = std::sqrt(v);
  const float first = root.front(), last = root.back();
  const float scale = first / (first - last);
  for (float& v : root) v = (v - last) * scale;
  std::vector<float> out(betas.size());
  for (size_t i = 0; i < root.size(); ++i) {
    const float bar = root[i] * root[i];
    const float alpha = i == 0 ? bar : bar / (root[i - 1] * root[i - 1]);
    out[i] = 1.f - alpha;
  }
  return out;
}

std::vector<float> make_alphas_cumprod(const io::SchedulerConfig& c) {
  DL_CHECK(c.num_train_timesteps >= 2 && c.num_train_timesteps <= 100000,
           "scheduler: num_train_timesteps must be in [2, 100000], got ", c.num_train_timesteps);
  const int64_t N = c.num_train_timesteps;
  const double b0 = config_double(c.beta_start), b1 = config_double(c.beta_end);
  std::vector<float> betas;
  if (c.beta_schedule == "scaled_linear") {
    betas = torch_linspace_f32(std::sqrt(b0), std::sqrt(b1), N);
    for (float& b : betas) b = b * b;
  } else if (c.beta_schedule == "linear") {
    betas = torch_linspace_f32(b0, b1, N);
  } else if (c.beta_schedule == "squaredcos_cap_v2") {
    // betas_for_alpha_bar (cosine): Python double arithmetic, stored as float32.
    auto alpha_bar = [](double t) {
      const double v = std::cos((t + 0.008) / 1.008 * M_PI / 2);
      return v * v;
    };
    for (int64_t i = 0; i < N; ++i) {
      const double t1 = double(i) / double(N), t2 = double(i + 1) / double(N);
      betas.push_back(float(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999)));
    }
  } else {
    fail("scheduler: beta_schedule '", c.beta_schedule, "' is not supported");
  }
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return cumprod_of_alphas(betas);
}

// The sigma-based samplers cannot start at sigma = infinity; diffusers sets the last alphas_cumprod to 2^-24 instead.
constexpr float kZeroSnrFloor = 1.f / float(1 << 24);

// Contiguous float32 data of t (a copy only when needed).
Tensor f32c(const Tensor& t) { return t.to(DType::F32).contiguous(); }

// Integer timesteps for the DDPM/DDIM family in sampling order (descending).
std::vector<int64_t> discrete_timesteps(const std::string& spacing, int64_t N, int64_t n, int64_t offset) {
  std::vector<int64_t> ts;
  if (spacing == "leading") {
    const int64_t ratio = N / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(i * ratio + offset);
  } else if (spacing == "linspace") {
    auto v = np_linspace(0, double(N - 1), n);
    for (auto it = v.rbegin(); it != v.rend(); ++it) ts.push_back(int64_t(np_round(*it)));
  } else if (spacing == "trailing") {
    for (double v : np_arange_down(double(N), 0, -double(N) / double(n))) ts.push_back(int64_t(np_round(v)) - 1);
  } else {
    fail("scheduler: timestep_spacing '", spacing, "' is not supported");
  }
  return ts;
}

std::vector<float> to_float(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

float clip_x0(float v, bool clip) { return clip ? std::clamp(v, -1.f, 1.f) : v; }

// ---------------------------------------------------------------------------------------------------------------
// DDPM, DDIM and PNDM: integer timesteps spaced over the training range ("leading", "trailing", ...); each step goes
// back by the stride num_train_timesteps / n.
class DiscreteScheduler : public Scheduler {
 public:
  DiscreteScheduler(const io::SchedulerConfig& c, std::string spacing) : Scheduler(c), spacing_(std::move(spacing)) {}

  void set_timesteps(int64_t n) override {
    check_steps(n);
    const int64_t N = cfg_.num_train_timesteps;
    // "leading" spacing with steps_offset 1 reaches timestep (n - 1) * (N / n) + 1, which is N itself for n = N: a
    // timestep that alphas_cumprod does not have. Refused here, before any sampling, with a count that works.
    if (const std::optional<int64_t> bad = out_of_range(n)) {
      int64_t most = n - 1;
      while (most > 1 && out_of_range(most)) --most;
      bool all_below = true;
      for (int64_t k = 1; k < most && all_below; ++k) all_below = !out_of_range(k);
      const std::string offset =
          spacing_ == "leading" ? " and steps_offset " + std::to_string(cfg_.steps_offset) : std::string();
      fail(name(), ": ", n, " steps with timestep_spacing '", spacing_, "'", offset, " would reach timestep ", *bad,
           ", outside the model's ", N, " training timesteps [0, ", N - 1, "]; ",
           all_below ? "use at most " : "the nearest step count below that works is ", most,
           all_below ? " steps" : "");
    }
    num_inference_steps_ = n;
    ts_ = discrete_timesteps(spacing_, N, n, cfg_.steps_offset);
    timesteps_ = to_float(ts_);
  }

 protected:
  // A timestep that step() would look up for n inference steps and that is outside [0, N), if there is one.
  // "trailing" can reach -1 too: like numpy's, its float arange may end with a step just above 0, rounded to 0
  // (N = 1000 with n = 61, 103, 121, ...; diffusers then indexes alphas_cumprod[-1], the last one, silently).
  virtual std::optional<int64_t> out_of_range(int64_t n) const {
    const int64_t N = cfg_.num_train_timesteps;
    for (int64_t t : discrete_timesteps(spacing_, N, n, cfg_.steps_offset))
      if (t < 0 || t >= N) return t;
    return std::nullopt;
  }

  int64_t stride() const { return cfg_.num_train_timesteps / num_inference_steps_; }
  // Throws naming the scheduler unless t indexes alphas_cumprod.
  void check_timestep(int64_t t) const {
    DL_CHECK(t >= 0 && t < cfg_.num_train_timesteps, name(), ": timestep ", t, " is out of range");
  }

  std::string spacing_;
  std::vector<int64_t> ts_;
};

class DDPM final : public DiscreteScheduler {
 public:
  DDPM(const io::SchedulerConfig& c, std::string spacing) : DiscreteScheduler(c, std::move(spacing)) {
    DL_CHECK(c.variance_type == "fixed_small" || c.variance_type == "fixed_small_log" ||
                 c.variance_type == "fixed_large",
             "ddpm: variance_type '", c.variance_type, "' is not supported");
  }
  const char* name() const override { return "ddpm"; }
  bool stochastic() const override { return true; }

  Tensor step(const Tensor& eps_in, size_t i, const Tensor& sample_in, const Tensor* noise_in) override {
    check_step(eps_in, i, sample_in, noise_in);
    const int64_t t = ts_[i];
    check_timestep(t);
    const int64_t prev_t = t - stride();
    const float a_t = alphas_cumprod_[size_t(t)];
    const float a_prev = prev_t >= 0 ? alphas_cumprod_[size_t(prev_t)] : 1.f;
    const float b_t = 1.f - a_t, b_prev = 1.f - a_prev;
    const float cur_alpha = a_t / a_prev, cur_beta = 1.f - cur_alpha;
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    const float c_x0 = (std::sqrt(a_prev) * cur_beta) / b_t;
    const float c_x = std::sqrt(cur_alpha) * b_prev / b_t;
    float std_dev = 0.f;
    if (t > 0) {
      float var = std::max((1.f - a_prev) / (1.f - a_t) * cur_beta, 1e-20f);
      if (cfg_.variance_type == "fixed_small_log")
        std_dev = std::exp(0.5f * std::log(var));
      else if (cfg_.variance_type == "fixed_large")
        std_dev = std::sqrt(cur_beta);
      else
        std_dev = std::sqrt(var);
    }
    const bool v_pred = cfg_.prediction_type == "v_prediction";
    Tensor eps = f32c(eps_in), x = f32c(sample_in), z = noise_in ? f32c(*noise_in) : Tensor();
    Tensor out = Tensor::empty(x.shape());
    const float *pe = eps.f32(), *px = x.f32(), *pz = z.defined() ? z.f32() : nullptr;
    float* po = out.f32();
    for (int64_t k = 0; k < x.numel(); ++k) {
      const float x0 = clip_x0(v_pred ? sa * px[k] - sb * pe[k] : (px[k] - sb * pe[k]) / sa, cfg_.clip_sample);
      float prev = c_x0 * x0 + c_x * px[k];
      if (t > 0) prev = prev + std_dev * pz[k];
      po[k] = prev;
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------------------------------
class DDIM final : public DiscreteScheduler {
 public:
  DDIM(const io::SchedulerConfig& c, std::string spacing, float eta) : DiscreteScheduler(c, std::move(spacing)), eta_(eta) {
    DL_CHECK(std::isfinite(eta) && eta >= 0.f, "ddim: eta must be >= 0, got ", eta);
    final_alpha_ = c.set_alpha_to_one ? 1.f : alphas_cumprod_[0];
  }
  const char* name() const override { return "ddim"; }
  bool stochastic() const override { return eta_ > 0.f; }

  Tensor step(const Tensor& eps_in, size_t i, const Tensor& sample_in, const Tensor* noise_in) override {
    check_step(eps_in, i, sample_in, noise_in);
    const int64_t t = ts_[i];
    check_timestep(t);
    const int64_t prev_t = t - stride();
    const float a_t = alphas_cumprod_[size_t(t)];
    const float a_prev = prev_t >= 0 ? alphas_cumprod_[size_t(prev_t)] : final_alpha_;
    const float b_t = 1.f - a_t, b_prev = 1.f - a_prev;
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    const float var = (b_prev / b_t) * (1.f - a_t / a_prev);
    const float std_dev = eta_ * std::sqrt(var);
    const float c_dir = std::sqrt(1.f - a_prev - std_dev * std_dev);
    const float c_x0 = std::sqrt(a_prev);
    const bool v_pred = cfg_.prediction_type == "v_prediction";
    Tensor eps = f32c(eps_in), x = f32c(sample_in), z = stochastic() ? f32c(*noise_in) : Tensor();
    Tensor out = Tensor::empty(x.shape());
    const float *pe = eps.f32(), *px = x.f32(), *pz = z.defined() ? z.f32() : nullptr;
    float* po = out.f32();
    for (int64_t k = 0; k < x.numel(); ++k) {
      float x0, e;
      if (v_pred) {
        x0 = sa * px[k] - sb * pe[k];
        e = sa * pe[k] + sb * px[k];
      } else {
        x0 = (px[k] - sb * pe[k]) / sa;
        e = pe[k];
      }
      x0 = clip_x0(x0, cfg_.clip_sample);
      float prev = c_x0 * x0 + c_dir * e;
      if (pz) prev = prev + std_dev * pz[k];
      po[k] = prev;
    }
    return out;
  }

 private:
  float eta_;
  float final_alpha_;
};

// ---------------------------------------------------------------------------------------------------------------
// PLMS with skip_prk_steps (the SD setting). The second step re-evaluates the first interval with the averaged eps,
// which is why the second-to-last training-order timestep appears twice.
class PNDM final : public DiscreteScheduler {
 public:
  PNDM(const io::SchedulerConfig& c, std::string spacing) : DiscreteScheduler(c, std::move(spacing)) {
    // diffusers' PNDM has no zero-SNR option; its step divides by sqrt(alphas_cumprod[t]).
    DL_CHECK(!c.rescale_betas_zero_snr,
             "pndm: rescale_betas_zero_snr is not supported (use ddim, ddpm, dpmpp2m or euler)");
    final_alpha_ = c.set_alpha_to_one ? 1.f : alphas_cumprod_[0];
  }
  const char* name() const override { return "pndm"; }

  // Its second step evaluates the second timestep plus the stride as well.
  std::optional<int64_t> out_of_range(int64_t n) const override {
    const int64_t N = cfg_.num_train_timesteps;
    if (const std::optional<int64_t> t = DiscreteScheduler::out_of_range(n)) return t;
    std::vector<int64_t> ts = discrete_timesteps(spacing_, N, n, cfg_.steps_offset);
    std::sort(ts.begin(), ts.end());
    if (ts.size() >= 2 && ts[ts.size() - 2] + N / n >= N) return ts[ts.size() - 2] + N / n;
    return std::nullopt;
  }

  void set_timesteps(int64_t n) override {
    DiscreteScheduler::set_timesteps(n);
    std::vector<int64_t> asc(ts_.rbegin(), ts_.rend());
    // concat(asc[:-1], asc[-2:-1], asc[-1:]) reversed.
    std::vector<int64_t> plms(asc.begin(), asc.end() - 1);
    if (asc.size() >= 2) plms.push_back(asc[asc.size() - 2]);
    plms.push_back(asc.back());
    ts_.assign(plms.rbegin(), plms.rend());
    timesteps_ = to_float(ts_);
    ets_.clear();
    cur_sample_ = Tensor();
    counter_ = 0;
  }

  Tensor step(const Tensor& eps_in, size_t i, const Tensor& sample_in, const Tensor* noise_in) override {
    check_step(eps_in, i, sample_in, noise_in);
    DL_CHECK(int64_t(i) == counter_, "pndm: steps must be taken in order after set_timesteps; expected step ",
             counter_, ", got ", i);
    const int64_t ratio = stride();
    int64_t t = ts_[i], prev_t = t - ratio;
    Tensor mo = f32c(eps_in).clone(), x = f32c(sample_in);
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(mo);
    } else {
      prev_t = t;
      t = t + ratio;
    }
    const size_t ne = ets_.size();
    const int64_t numel = x.numel();
    Tensor combined = Tensor::empty(x.shape());
    float* pm = combined.f32();
    auto e = [&](size_t back) { return ets_[ne - back].f32(); };
    if (ne == 1 && counter_ == 0) {
      std::copy(mo.f32(), mo.f32() + numel, pm);
      cur_sample_ = x.clone();
    } else if (ne == 1 && counter_ == 1) {
      const float *a = mo.f32(), *b = e(1);
      for (int64_t k = 0; k < numel; ++k) pm[k] = (a[k] + b[k]) / 2.f;
      x = cur_sample_;
      cur_sample_ = Tensor();
    } else if (ne == 2) {
      const float *e1 = e(1), *e2 = e(2);
      for (int64_t k = 0; k < numel; ++k) pm[k] = (3.f * e1[k] - e2[k]) / 2.f;
    } else if (ne == 3) {
      const float *e1 = e(1), *e2 = e(2), *e3 = e(3);
      for (int64_t k = 0; k < numel; ++k) pm[k] = (23.f * e1[k] - 16.f * e2[k] + 5.f * e3[k]) / 12.f;
    } else {
      const float *e1 = e(1), *e2 = e(2), *e3 = e(3), *e4 = e(4);
      const float c = float(1.0 / 24.0);
      for (int64_t k = 0; k < numel; ++k) pm[k] = c * (55.f * e1[k] - 59.f * e2[k] + 37.f * e3[k] - 9.f * e4[k]);
    }
    check_timestep(t);
    const float a_t = alphas_cumprod_[size_t(t)];
    const float a_prev = prev_t >= 0 ? alphas_cumprod_[size_t(prev_t)] : final_alpha_;
    const float b_t = 1.f - a_t, b_prev = 1.f - a_prev;
    const float c_x = std::sqrt(a_prev / a_t);
    const float denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
    const float c_e = a_prev - a_t;
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    const bool v_pred = cfg_.prediction_type == "v_prediction";
    Tensor out = Tensor::empty(x.shape());
    const float* px = x.f32();
    float* po = out.f32();
    for (int64_t k = 0; k < numel; ++k) {
      const float m = v_pred ? sa * pm[k] + sb * px[k] : pm[k];
      po[k] = c_x * px[k] - c_e * m / denom;
    }
    ++counter_;
    return out;
  }

 private:
  float final_alpha_;
  std::vector<Tensor> ets_;
  Tensor cur_sample_;
  int64_t counter_ = 0;
};

// sqrt((1 - a) / a) per training timestep, as float32 (diffusers computes it on the float32 tensor).
std::vector<float> train_sigmas(const std::vector<float>& ac) {
  std::vector<float> s(ac.size());
  for (size_t i = 0; i < ac.size(); ++i) s[i] = std::sqrt((1.f - ac[i]) / ac[i]);
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
class Euler final : public Scheduler {
 public:
  Euler(const io::SchedulerConfig& c, std::string spacing, bool ancestral)
      : Scheduler(c), spacing_(std::move(spacing)), ancestral_(ancestral) {
    DL_CHECK(spacing_ == "linspace" || spacing_ == "leading" || spacing_ == "trailing", name(),
             ": timestep_spacing '", spacing_, "' is not supported");
    if (c.rescale_betas_zero_snr) alphas_cumprod_.back() = kZeroSnrFloor;
  }
  const char* name() const override { return ancestral_ ? "euler_a" : "euler"; }
  bool stochastic() const override { return ancestral_; }

  void set_timesteps(int64_t n) override {
    check_steps(n);
    num_inference_steps_ = n;
    const int64_t N = cfg_.num_train_timesteps;
    std::vector<double> ts;
    if (spacing_ == "linspace") {
      auto v = np_linspace(0, double(N - 1), n);
      ts.assign(v.rbegin(), v.rend());
      // 0.24's Euler asks numpy for float32 timesteps; Euler-ancestral keeps float64 ones and interpolates on those.
      if (!ancestral_)
        for (double& t : ts) t = double(float(t));
    } else if (spacing_ == "leading") {
      const int64_t ratio = N / n;
      for (int64_t i = n - 1; i >= 0; --i) ts.push_back(double(i * ratio + cfg_.steps_offset));
    } else {
      for (double v : np_arange_down(double(N), 0, -double(N) / double(n))) ts.push_back(np_round(v) - 1);
    }
    const auto base = train_sigmas(alphas_cumprod_);
    sigmas_.clear();
    for (double t : ts) sigmas_.push_back(float(np_interp(t, base)));
    sigmas_.push_back(0.f);
    timesteps_.assign(ts.begin(), ts.end());
  }

  float init_noise_sigma() const override {
    DL_CHECK(!sigmas_.empty(), name(), ": init_noise_sigma needs set_timesteps first");
    const float m = *std::max_element(sigmas_.begin(), sigmas_.end());
    // diffusers: linspace/trailing use max sigma, leading sqrt(max^2 + 1).
    return spacing_ == "leading" ? std::sqrt(m * m + 1.f) : m;
  }

  Tensor scale_model_input(const Tensor& sample, size_t i) const override {
    DL_CHECK(i < timesteps_.size(), name(), ": step index ", i, " is out of range (", timesteps_.size(),
             " timesteps)");
    const float sigma = sigmas_[i];
    const float d = std::sqrt(sigma * sigma + 1.f);
    Tensor x = f32c(sample), out = Tensor::empty(x.shape());
    const float* px = x.f32();
    float* po = out.f32();
    for (int64_t k = 0; k < x.numel(); ++k) po[k] = px[k] / d;
    return out;
  }

  Tensor step(const Tensor& eps_in, size_t i, const Tensor& sample_in, const Tensor* noise_in) override {
    check_step(eps_in, i, sample_in, noise_in);
    const float sigma = sigmas_[i], sigma_next = sigmas_[i + 1];
    const bool v_pred = cfg_.prediction_type == "v_prediction";
    const float v_c_eps = -sigma / std::sqrt(sigma * sigma + 1.f), v_c_x = sigma * sigma + 1.f;
    Tensor eps = f32c(eps_in), x = f32c(sample_in), z = ancestral_ ? f32c(*noise_in) : Tensor();
    Tensor out = Tensor::empty(x.shape());
    const float *pe = eps.f32(), *px = x.f32();
    float* po = out.f32();
    if (!ancestral_) {
      // s_churn = 0, so gamma = 0 and sigma_hat = sigma.
      const float sigma_hat = sigma * (0.f + 1.f);
      const float dt = sigma_next - sigma_hat;
      for (int64_t k = 0; k < x.numel(); ++k) {
        const float x0 = v_pred ? pe[k] * v_c_eps + px[k] / v_c_x : px[k] - sigma_hat * pe[k];
        const float d = (px[k] - x0) / sigma_hat;
        po[k] = px[k] + d * dt;
      }
      return out;
    }
    const float s_from = sigma, s_to = sigma_next;
    const float s_up = std::sqrt(s_to * s_to * (s_from * s_from - s_to * s_to) / (s_from * s_from));
    const float s_down = std::sqrt(s_to * s_to - s_up * s_up);
    const float dt = s_down - sigma;
    const float* pz = z.f32();
    for (int64_t k = 0; k < x.numel(); ++k) {
      const float x0 = v_pred ? pe[k] * v_c_eps + px[k] / v_c_x : px[k] - sigma * pe[k];
      const float d = (px[k] - x0) / sigma;
      po[k] = (px[k] + d * dt) + pz[k] * s_up;
    }
    return out;
  }

 private:
  std::string spacing_;
  bool ancestral_;
  std::vector<float> sigmas_;
};

// ---------------------------------------------------------------------------------------------------------------
// DPM-Solver++ (2M, midpoint) with the 0.24 defaults: lower_order_final, euler_at_final off, and the last sigma
// being sigma(t = 0) rather than 0.
class DPMpp2M final : public Scheduler {
 public:
  DPMpp2M(const io::SchedulerConfig& c, std::string spacing, bool karras)
      : Scheduler(c), spacing_(std::move(spacing)), karras_(karras) {
    DL_CHECK(spacing_ == "linspace" || spacing_ == "leading" || spacing_ == "trailing",
             "dpmpp2m: timestep_spacing '", spacing_, "' is not supported");
    if (c.rescale_betas_zero_snr) alphas_cumprod_.back() = kZeroSnrFloor;
  }
  const char* name() const override { return "dpmpp2m"; }

  void set_timesteps(int64_t n) override {
    check_steps(n);
    const int64_t N = cfg_.num_train_timesteps;  // lambda_min_clipped = -inf, so the last timestep is N
    std::vector<double> ts;
    if (spacing_ == "linspace") {
      auto v = np_linspace(0, double(N - 1), n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(double(int64_t(np_round(v[size_t(i)]))));
    } else if (spacing_ == "leading") {
      const int64_t ratio = N / (n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(double(i * ratio + cfg_.steps_offset));
    } else {
      for (double v : np_arange_down(double(N), 0, -double(N) / double(n)))
        ts.push_back(double(int64_t(np_round(v)) - 1));
    }
    const auto base = train_sigmas(alphas_cumprod_);
    sigmas_.clear();
    if (karras_) {
      std::vector<float> log_sigmas(base.size());
      for (size_t k = 0; k < base.size(); ++k) log_sigmas[k] = std::log(base[k]);
      const double rho = 7.0;
      const double lo = std::pow(double(base.front()), 1 / rho), hi = std::pow(double(base.back()), 1 / rho);
      const auto ramp = np_linspace(0, 1, n);
      ts.clear();
      std::vector<double> ks;
      for (double r : ramp) ks.push_back(std::pow(hi + r * (lo - hi), rho));
      for (double s : ks) ts.push_back(np_round(sigma_to_t(s, log_sigmas)));
      for (double s : ks) sigmas_.push_back(float(s));
      sigmas_.push_back(float(ks.back()));
    } else {
      for (double t : ts) sigmas_.push_back(float(np_interp(t, base)));
      sigmas_.push_back(std::sqrt((1.f - alphas_cumprod_[0]) / alphas_cumprod_[0]));
    }
    // Rounding can repeat a timestep when n approaches N (n = 1000 gives 500 twice); 0.24 keeps the repeat, since
    // it steps by index, not by timestep.
    timesteps_.clear();
    for (double t : ts) timesteps_.push_back(float(int64_t(t)));
    num_inference_steps_ = n;
    outputs_[0] = outputs_[1] = Tensor();
    lower_order_nums_ = 0;
    next_step_ = 0;
  }

  Tensor step(const Tensor& eps_in, size_t i, const Tensor& sample_in, const Tensor* noise_in) override {
    check_step(eps_in, i, sample_in, noise_in);
    DL_CHECK(i == next_step_, "dpmpp2m: steps must be taken in order after set_timesteps; expected step ",
             next_step_, ", got ", i);
    DL_CHECK(i + 1 < sigmas_.size(), "dpmpp2m: step index ", i, " has no next sigma");
    const size_t nts = timesteps_.size();
    const bool lower_final = i == nts - 1 && nts < 15;
    const bool v_pred = cfg_.prediction_type == "v_prediction";
    Tensor eps = f32c(eps_in), x = f32c(sample_in);
    const int64_t numel = x.numel();
    const float *pe = eps.f32(), *px = x.f32();

    float a_s, s_s;
    alpha_sigma(sigmas_[i], a_s, s_s);
    Tensor x0t = Tensor::empty(x.shape());
    float* p0 = x0t.f32();
    for (int64_t k = 0; k < numel; ++k) p0[k] = v_pred ? a_s * px[k] - s_s * pe[k] : (px[k] - s_s * pe[k]) / a_s;
    outputs_[0] = outputs_[1];
    outputs_[1] = x0t;

    float a_t, s_t;
    alpha_sigma(sigmas_[i + 1], a_t, s_t);
    const float lambda_t = std::log(a_t) - std::log(s_t);
    const float lambda_s0 = std::log(a_s) - std::log(s_s);
    const float h = lambda_t - lambda_s0;
    const float c_x = s_t / s_s;
    const float c_d = a_t * (std::exp(-h) - 1.f);
    Tensor out = Tensor::empty(x.shape());
    float* po = out.f32();
    if (lower_order_nums_ < 1 || lower_final) {
      for (int64_t k = 0; k < numel; ++k) po[k] = c_x * px[k] - c_d * p0[k];
    } else {
      float a_1, s_1;
      alpha_sigma(sigmas_[i - 1], a_1, s_1);
      const float lambda_s1 = std::log(a_1) - std::log(s_1);
      const float h0 = lambda_s0 - lambda_s1;
      const float r0 = h0 / h;
      const float inv_r0 = 1.f / r0;
      const float c_d1 = 0.5f * c_d;
      const float* p1 = outputs_[0].f32();
      for (int64_t k = 0; k < numel; ++k) {
        const float d1 = inv_r0 * (p0[k] - p1[k]);
        po[k] = c_x * px[k] - c_d * p0[k] - c_d1 * d1;
      }
    }
    if (lower_order_nums_ < 2) ++lower_order_nums_;
    ++next_step_;
    return out;
  }

 private:
  static void alpha_sigma(float sigma, float& alpha, float& sig) {
    alpha = 1.f / std::sqrt(sigma * sigma + 1.f);
    sig = sigma * alpha;
  }

  // diffusers _sigma_to_t: position of log(sigma) among the (float32) log training sigmas, linearly interpolated.
  static double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
    const double ls = std::log(std::max(sigma, 1e-10));
    int64_t low = 0;
    for (size_t k = 0; k < log_sigmas.size(); ++k)
      if (ls - double(log_sigmas[k]) >= 0) low = int64_t(k);
    low = std::min<int64_t>(low, int64_t(log_sigmas.size()) - 2);
    const float lo = log_sigmas[size_t(low)], hi = log_sigmas[size_t(low) + 1];
    double w = (double(lo) - ls) / double(lo - hi);
    w = std::clamp(w, 0.0, 1.0);
    return (1 - w) * double(low) + w * double(low + 1);
  }

  std::string spacing_;
  bool karras_;
  std::vector<float> sigmas_;
  Tensor outputs_[2];
  int lower_order_nums_ = 0;
  size_t next_step_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
Scheduler::Scheduler(const io::SchedulerConfig& cfg) : cfg_(cfg), alphas_cumprod_(make_alphas_cumprod(cfg)) {
  DL_CHECK(cfg.prediction_type == "epsilon" || cfg.prediction_type == "v_prediction", "scheduler: prediction_type '",
           cfg.prediction_type, "' is not supported");
  DL_CHECK(!cfg.rescale_betas_zero_snr || cfg.prediction_type == "v_prediction",
           "scheduler: rescale_betas_zero_snr needs prediction_type v_prediction (epsilon has no x0 at zero SNR)");
  DL_CHECK(cfg.steps_offset >= 0 && cfg.steps_offset < cfg.num_train_timesteps, "scheduler: steps_offset ",
           cfg.steps_offset, " is out of range");
}

void Scheduler::check_steps(int64_t n) const {
  DL_CHECK(n >= 1 && n <= cfg_.num_train_timesteps, name(), ": number of inference steps must be in [1, ",
           cfg_.num_train_timesteps, "], got ", n);
}

void Scheduler::check_step(const Tensor& eps, size_t step_index, const Tensor& sample, const Tensor* noise) const {
  DL_CHECK(!timesteps_.empty(), name(), ": step called before set_timesteps");
  DL_CHECK(step_index < timesteps_.size(), name(), ": step index ", step_index, " is out of range (",
           timesteps_.size(), " timesteps)");
  DL_CHECK(eps.defined() && sample.defined(), name(), ": step needs a model output and a sample");
  DL_CHECK(eps.shape() == sample.shape(), name(), ": model output ", eps.describe(), " does not match sample ",
           sample.describe());
  if (stochastic()) {
    DL_CHECK(noise && noise->defined(), name(), ": this sampler is stochastic and needs a noise tensor");
    DL_CHECK(noise->shape() == sample.shape(), name(), ": noise ", noise->describe(), " does not match sample ",
             sample.describe());
  }
}

Tensor Scheduler::scale_model_input(const Tensor& sample, size_t step_index) const {
  DL_CHECK(step_index < timesteps_.size(), name(), ": step index ", step_index, " is out of range (",
           timesteps_.size(), " timesteps)");
  return sample;
}

Tensor Scheduler::add_noise(const Tensor& x0_in, const Tensor& noise_in, const std::vector<int64_t>& ts) const {
  DL_CHECK(x0_in.defined() && noise_in.defined() && x0_in.shape() == noise_in.shape(), name(),
           ": add_noise needs x0 and noise of one shape, got ", x0_in.describe(), " and ", noise_in.describe());
  DL_CHECK(x0_in.dim() >= 1 && x0_in.size(0) == int64_t(ts.size()), name(),
           ": add_noise needs one timestep per batch row (", x0_in.dim() >= 1 ? x0_in.size(0) : 0, "), got ",
           ts.size());
  Tensor x0 = f32c(x0_in), z = f32c(noise_in), out = Tensor::empty(x0.shape());
  const int64_t row = ts.empty() ? 0 : x0.numel() / int64_t(ts.size());
  const float *px = x0.f32(), *pz = z.f32();
  float* po = out.f32();
  for (size_t b = 0; b < ts.size(); ++b) {
    DL_CHECK(ts[b] >= 0 && ts[b] < cfg_.num_train_timesteps, name(), ": add_noise timestep ", ts[b],
             " is outside [0, ", cfg_.num_train_timesteps, ")");
    const float a = alphas_cumprod_[size_t(ts[b])];
    const float sa = std::sqrt(a), so = std::sqrt(1.f - a);
    for (int64_t k = int64_t(b) * row; k < int64_t(b + 1) * row; ++k) po[k] = sa * px[k] + so * pz[k];
  }
  return out;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const io::SchedulerConfig& cfg,
                                          const SchedulerOptions& opt) {
  DL_CHECK(!opt.use_karras_sigmas || name == "dpmpp2m", "scheduler '", name,
           "': use_karras_sigmas is only supported by dpmpp2m");
  DL_CHECK(opt.eta == 0.f || name == "ddim", "scheduler '", name, "': eta is only supported by ddim");
  const std::string& own = opt.timestep_spacing.empty() ? cfg.timestep_spacing : opt.timestep_spacing;
  const std::string k_diffusion = opt.timestep_spacing.empty() ? std::string("linspace") : opt.timestep_spacing;
  if (name == "ddpm") return std::make_unique<DDPM>(cfg, own);
  if (name == "ddim") return std::make_unique<DDIM>(cfg, own, opt.eta);
  if (name == "pndm") return std::make_unique<PNDM>(cfg, own);
  if (name == "dpmpp2m") return std::make_unique<DPMpp2M>(cfg, k_diffusion, opt.use_karras_sigmas);
  if (name == "euler") return std::make_unique<Euler>(cfg, k_diffusion, false);
  if (name == "euler_a") return std::make_unique<Euler>(cfg, k_diffusion, true);
  fail("unknown scheduler '", name, "' (expected ddpm, ddim, pndm, dpmpp2m, euler or euler_a)");
}

}  // namespace dl::diffusion
