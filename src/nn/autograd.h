// Reverse-mode automatic differentiation over the ops in core/ops.h.
//
// A Var holds a value and, when it takes part in differentiation, a gradient. Leaves are parameters or inputs;
// every op on Vars that need gradients records a Node with a backward function. Parameters can be frozen
// (requires_grad = false): they never get a gradient buffer, yet gradients still flow *through* the ops that use
// them to whatever inputs do need gradients (so the diffusion loss reaches the LLM through a frozen UNet).
// Leaf gradients accumulate across backward() calls until zero_grad(), which is gradient accumulation over
// micro-batches. checkpoint() trades compute for memory by recomputing a segment during backward.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dl::nn {

class Var;

struct Node {
  std::vector<Var> inputs;
  // Computes gradients for the inputs whose `need` flag is set (others may be left undefined).
  std::function<void(const Tensor& gout, const std::vector<bool>& need, std::vector<Tensor>& gin)> backward;
  std::string name;  // op name, for error messages
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const;
  const Shape& shape() const { return value().shape(); }
  // A leaf requires a gradient when flagged; a computed Var when any input does.
  bool requires_grad() const;
  void set_requires_grad(bool on);  // leaves only; freezing drops the gradient buffer
  // Replaces a leaf's value in place for every holder of this Var (same shape; the dtype may change): how a
  // trainer turns a low-precision or memory-mapped frozen weight into a writable F32 master copy.
  void set_value(Tensor value);
  bool is_leaf() const;
  // Accumulated gradient (undefined until a backward pass reached this leaf).
  const Tensor& grad() const;
  void zero_grad();
  void set_name(std::string name);
  const std::string& name() const;

  // Backpropagates from this Var. A scalar (one element) needs no seed; otherwise seed has the value's shape.
  void backward(const Tensor& seed = Tensor()) const;

  // Internal: used by ops to build the graph.
  static Var make_result(Tensor value, std::shared_ptr<Node> node);
  const std::shared_ptr<Node>& node() const;
  void accumulate_grad(const Tensor& g) const;
  const void* id() const { return impl_.get(); }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// While alive on this thread, ops record no graph (inference, or the forward of a checkpointed segment).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};
bool grad_enabled();

// Runs fn on inputs without keeping its intermediate activations; during backward fn is run again with
// recording on and differentiated. Parameters captured by fn receive their gradients then.
Var checkpoint(const std::function<Var(const std::vector<Var>&)>& fn, const std::vector<Var>& inputs);

// Records an op: value computed by the caller; backward called with the need-flags of `inputs`. Returns a Var
// without a graph node when no input requires a gradient or recording is off.
Var record(const char* name, Tensor value, std::vector<Var> inputs,
           std::function<void(const Tensor& gout, const std::vector<bool>& need, std::vector<Tensor>& gin)> backward);

}  // namespace dl::nn
