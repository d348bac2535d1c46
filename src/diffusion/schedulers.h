// Noise schedulers for Stable Diffusion sampling and training, numerically matching diffusers 0.24 (float32
// throughout, same operation order), so a trajectory agrees with the Python one to float rounding per step.
//
// Usage: s = make_scheduler("ddpm", cfg); s->set_timesteps(n); x = randn * s->init_noise_sigma();
// for i in [0, s->timesteps().size()): eps = unet(s->scale_model_input(x, i), s->timesteps()[i]);
// x = s->step(eps, i, x, stochastic ? &z_i : nullptr).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"

namespace dl::diffusion {

struct SchedulerOptions {
  float eta = 0.f;                 // DDIM only: 0 is deterministic DDIM, 1 is DDPM-like
  bool use_karras_sigmas = false;  // DPM-Solver++ 2M only
  // Empty: the class default. diffusers' Euler and DPM-Solver default to "linspace" and SD 2.1's scheduler file does
  // not name a spacing, so those ignore SchedulerConfig::timestep_spacing (whose default, "leading", is DDPM's).
  std::string timestep_spacing;
};

class Scheduler {
 public:
  explicit Scheduler(const io::SchedulerConfig& cfg);
  virtual ~Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  virtual const char* name() const = 0;
  // Builds the inference timesteps and resets any multistep state. 1 <= n <= num_train_timesteps.
  virtual void set_timesteps(int64_t n) = 0;
  // Timesteps to feed the UNet, in sampling order (fractional for Euler). Empty before set_timesteps.
  const std::vector<float>& timesteps() const { return timesteps_; }
  // Scale of the initial latent draw; Euler's depends on its sigmas, so call set_timesteps first.
  virtual float init_noise_sigma() const { return 1.f; }
  virtual Tensor scale_model_input(const Tensor& sample, size_t step_index) const;
  // One denoising step from timesteps()[step_index]. Multistep schedulers (pndm, dpmpp2m) must be stepped in order
  // 0, 1, 2, ... after set_timesteps. `noise` is a standard-normal draw shaped like sample: required when
  // stochastic(), ignored otherwise.
  virtual Tensor step(const Tensor& eps, size_t step_index, const Tensor& sample, const Tensor* noise) = 0;
  virtual bool stochastic() const { return false; }

  // Training forward process q(x_t | x_0) = sqrt(a_t) x0 + sqrt(1 - a_t) noise (DDPMScheduler.add_noise), with one
  // integer timestep per batch row (x0's first dimension).
  Tensor add_noise(const Tensor& x0, const Tensor& noise, const std::vector<int64_t>& timesteps) const;

  const std::vector<float>& alphas_cumprod() const { return alphas_cumprod_; }
  const io::SchedulerConfig& config() const { return cfg_; }

 protected:
  void check_steps(int64_t n) const;
  // Throws unless step_index is in range, eps/sample/noise agree in shape and noise is given when stochastic().
  void check_step(const Tensor& eps, size_t step_index, const Tensor& sample, const Tensor* noise) const;

  io::SchedulerConfig cfg_;
  std::vector<float> alphas_cumprod_;
  std::vector<float> timesteps_;
  int64_t num_inference_steps_ = 0;
};

// name: ddpm, ddim, pndm, dpmpp2m, euler, euler_a. Throws dl::Error for unknown names or options that do not apply.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const io::SchedulerConfig& cfg,
                                          const SchedulerOptions& options = {});

}  // namespace dl::diffusion
