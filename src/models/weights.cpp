#include "models/weights.h"

#include "core/error.h"

namespace dl::models {

void ParameterSet::adopt(const io::StateDict& weights, const std::string& prefix) {
  for (const auto& [name, t] : weights) {
    if (name.rfind(prefix, 0) != 0) continue;
    nn::Var v(t, false);
    v.set_name(name);
    params_.insert_or_assign(name, v);
  }
}

const nn::Var& ParameterSet::at(const std::string& name) const {
  auto it = params_.find(name);
  DL_CHECK(it != params_.end(), "model parameter '", name, "' is missing");
  return it->second;
}

nn::Var as_f32(const nn::Var& v) {
  if (v.value().dtype() == DType::F32) return v;
  DL_CHECK(!v.requires_grad(), "parameter '", v.name(), "' is ", dtype_name(v.value().dtype()),
           ": train with F32 weights");
  return nn::Var(v.value().to(DType::F32));
}

}  // namespace dl::models
