// Named model parameters as autograd leaves. Models keep their weights here by their original state-dict names, so
// training, gradient checks and checkpoints address them the same way the PyTorch release does.
#pragma once
#include <map>
#include <string>

#include "io/torch_bin.h"
#include "nn/autograd.h"

namespace dl::models {

class ParameterSet {
 public:
  // Wraps every tensor of `weights` whose name starts with `prefix` (frozen until a trainer unfreezes it).
  void adopt(const io::StateDict& weights, const std::string& prefix);
  // The parameter `name`; throws naming it when absent.
  const nn::Var& at(const std::string& name) const;
  bool contains(const std::string& name) const { return params_.count(name) != 0; }
  const std::map<std::string, nn::Var>& all() const { return params_; }

 private:
  std::map<std::string, nn::Var> params_;
};

// The parameter itself when it is F32; otherwise an F32 copy as a constant. Elementwise ops compute in F32, and
// low-precision (F16/BF16) weights are only ever frozen inference weights, so no gradient is lost.
nn::Var as_f32(const nn::Var& v);

}  // namespace dl::models
