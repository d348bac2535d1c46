#include "nn/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/ops.h"

namespace dl::nn {

namespace {
thread_local bool t_grad_enabled = true;
}

struct Var::Impl {
  Tensor value;
  Tensor grad;
  bool requires_grad = false;
  std::shared_ptr<Node> node;
  std::string name;
};

NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }
bool grad_enabled() { return t_grad_enabled; }

Var::Var(Tensor value, bool requires_grad) : impl_(std::make_shared<Impl>()) {
  DL_CHECK(value.defined(), "Var: undefined value");
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
}

const Tensor& Var::value() const {
  DL_CHECK(impl_, "Var: undefined");
  return impl_->value;
}

bool Var::requires_grad() const { return impl_ && (impl_->requires_grad || impl_->node); }
bool Var::is_leaf() const { return impl_ && !impl_->node; }

void Var::set_requires_grad(bool on) {
  DL_CHECK(is_leaf(), "set_requires_grad: only leaves can be frozen or unfrozen");
  impl_->requires_grad = on;
  if (!on) impl_->grad = Tensor();
}

void Var::set_value(Tensor value) {
  DL_CHECK(is_leaf(), "set_value: only leaves can be replaced");
  DL_CHECK(value.defined() && value.shape() == impl_->value.shape(), "set_value: ", value.describe(),
           " does not match ", impl_->value.describe(), impl_->name.empty() ? "" : " of ", impl_->name);
  impl_->value = std::move(value);
  impl_->grad = Tensor();
}

const Tensor& Var::grad() const {
  DL_CHECK(impl_, "Var: undefined");
  return impl_->grad;
}

void Var::zero_grad() {
  if (impl_) impl_->grad = Tensor();
}

void Var::set_name(std::string name) { impl_->name = std::move(name); }
const std::string& Var::name() const { return impl_->name; }

Var Var::make_result(Tensor value, std::shared_ptr<Node> node) {
  Var v(std::move(value), false);
  v.impl_->node = std::move(node);
  return v;
}

const std::shared_ptr<Node>& Var::node() const { return impl_->node; }

void Var::accumulate_grad(const Tensor& g) const {
  DL_CHECK(g.shape() == impl_->value.shape(), "gradient ", g.describe(), " does not match value ",
           impl_->value.describe(), impl_->name.empty() ? "" : " of ", impl_->name);
  if (!impl_->grad.defined()) {
    impl_->grad = g.clone();
  } else {
    ops::add_inplace(impl_->grad, g);
  }
}

void Var::backward(const Tensor& seed) const {
  DL_CHECK(requires_grad(), "backward: this value does not require a gradient (every input is frozen)");
  Tensor s = seed;
  if (!s.defined()) {
    DL_CHECK(value().numel() == 1, "backward: a seed gradient is needed for non-scalar ", value().describe());
    s = Tensor::full(value().shape(), 1.f);
  }
  DL_CHECK(s.shape() == value().shape(), "backward: seed ", s.describe(), " vs value ", value().describe());

  // Topological order of the nodes reachable from this Var (iterative DFS: graphs can be deep).
  std::vector<const Var*> order;
  std::unordered_set<const void*> seen;
  std::vector<std::pair<const Var*, size_t>> stack{{this, 0}};
  seen.insert(id());
  while (!stack.empty()) {
    auto& [v, next] = stack.back();
    const auto& node = v->node();
    if (node && next < node->inputs.size()) {
      const Var& in = node->inputs[next++];
      if (in.requires_grad() && in.node() && seen.insert(in.id()).second) stack.push_back({&in, 0});
      continue;
    }
    order.push_back(v);
    stack.pop_back();
  }

  std::unordered_map<const void*, Tensor> pending;  // gradients of non-leaf Vars
  pending[id()] = s.contiguous();
  if (is_leaf()) {
    accumulate_grad(pending[id()]);
    return;
  }
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const Var& v = **it;
    auto gi = pending.find(v.id());
    if (gi == pending.end()) continue;  // no gradient reached it
    Tensor gout = std::move(gi->second);
    pending.erase(gi);
    const Node& node = *v.node();
    std::vector<bool> need(node.inputs.size());
    for (size_t i = 0; i < need.size(); ++i) need[i] = node.inputs[i].requires_grad();
    std::vector<Tensor> gin(node.inputs.size());
    node.backward(gout, need, gin);
    for (size_t i = 0; i < gin.size(); ++i) {
      if (!need[i]) continue;
      DL_CHECK(gin[i].defined(), "backward of ", node.name, " produced no gradient for input ", i);
      const Var& in = node.inputs[i];
      DL_CHECK(gin[i].shape() == in.shape(), "backward of ", node.name, ": gradient ", gin[i].describe(),
               " for input ", i, " of shape ", shape_str(in.shape()));
      if (in.is_leaf()) {
        in.accumulate_grad(gin[i]);
      } else {
        auto [pi, inserted] = pending.try_emplace(in.id(), gin[i]);
        // A fresh sum: pending gradients may alias tensors handed to other inputs.
        if (!inserted) pi->second = ops::add(pi->second, gin[i]);
      }
    }
  }
}

Var record(const char* name, Tensor value, std::vector<Var> inputs,
           std::function<void(const Tensor&, const std::vector<bool>&, std::vector<Tensor>&)> backward) {
  bool any = false;
  for (const Var& v : inputs) any = any || v.requires_grad();
  if (!any || !grad_enabled()) return Var(std::move(value), false);
  auto node = std::make_shared<Node>();
  node->inputs = std::move(inputs);
  node->backward = std::move(backward);
  node->name = name;
  return Var::make_result(std::move(value), std::move(node));
}

Var checkpoint(const std::function<Var(const std::vector<Var>&)>& fn, const std::vector<Var>& inputs) {
  Tensor out;
  {
    NoGradGuard no_grad;
    std::vector<Var> detached;
    for (const Var& v : inputs) detached.emplace_back(v.value(), false);
    out = fn(detached).value();
  }
  if (!grad_enabled()) return Var(out, false);
  // Recorded even when no explicit input needs a gradient: parameters captured by fn may.
  auto node = std::make_shared<Node>();
  node->inputs = inputs;
  node->name = "checkpoint";
  node->backward = [fn, inputs](const Tensor& gout, const std::vector<bool>& need, std::vector<Tensor>& gin) {
    // Recompute with recording on, whatever mode the caller's backward() runs in.
    const bool prev = t_grad_enabled;
    t_grad_enabled = true;
    struct Restore {
      bool v;
      ~Restore() { t_grad_enabled = v; }
    } restore{prev};
    std::vector<Var> leaves;
    for (size_t i = 0; i < inputs.size(); ++i) leaves.emplace_back(inputs[i].value(), need[i]);
    Var y = fn(leaves);
    if (y.requires_grad()) y.backward(gout);
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!need[i]) continue;
      gin[i] = leaves[i].grad().defined() ? leaves[i].grad() : Tensor::zeros(inputs[i].shape());
    }
  };
  return Var::make_result(out, std::move(node));
}

}  // namespace dl::nn
