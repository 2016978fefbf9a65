// The hook through which a layer's per-step loop can be recorded and replayed (CUDA graphs), for any time loop
// written against a device policy `PW` (csrc/rnn_bidir_impl.h uses it; rnn_layer_impl.h's loops can too):
//
//   StepLoopKey key;
//   key.add_all(op_id, dtype, device, sizes..., flags..., every tensor the loop's launches read or write);
//   run_steps(pw, key, [&] { for (s = 0; s < T; ++s) { ...GEMMs and pointwise launches... } });
//
// Policies with `run_steps(key, fn)` (CUDA: csrc/cuda/rnn_policy.h) may run `fn` once under stream capture and
// later replay the recorded launches WITHOUT calling `fn` again, so the loop body must only launch work: no host
// state that outlives the loop may change inside it (e.g. no std::swap of buffers whose final holder is used
// afterwards; alternate buffers by step parity instead), and every tensor it touches must be allocated before it
// and added to the key (its data pointer, sizes and strides). Other policies (CPU) just call `fn`.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace s2s_fused {

// What a recorded per-step loop depends on (CUDA graphs): `shape` fixes the sequence of launches (op, dtype,
// device, sizes, strides, flags); `ptrs` are the data pointers the launches read and write.
struct StepLoopKey {
  std::vector<int64_t> shape;
  std::vector<int64_t> ptrs;
  void add(int64_t v) { shape.push_back(v); }
  void add(const at::Tensor& t) {
    if (!t.defined()) {
      shape.push_back(-1);
      return;
    }
    shape.push_back(t.dim());
    for (int64_t i = 0; i < t.dim(); ++i) {
      shape.push_back(t.size(i));
      shape.push_back(t.stride(i));
    }
    ptrs.push_back(static_cast<int64_t>(reinterpret_cast<intptr_t>(t.const_data_ptr())));
  }
  template <class... Ts>
  void add_all(const Ts&... ts) {
    (add(ts), ...);
  }
};

template <class PW>
constexpr bool has_step_recorder = requires(const PW& pw, const StepLoopKey& k, const std::function<void()>& f) {
  pw.run_steps(k, f);
};

// Runs the per-step loop `fn`: through the policy's recorder where it has one (CUDA graphs), else directly.
template <class PW, class F>
void run_steps(const PW& pw, const StepLoopKey& key, F&& fn) {
  if constexpr (has_step_recorder<PW>) {
    pw.run_steps(key, std::function<void()>(std::forward<F>(fn)));
  } else {
    fn();
  }
}

}  // namespace s2s_fused
