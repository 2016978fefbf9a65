// CPU registration of the masked cross-entropy ops: the capability-selected kernels of
// csrc/cpu/kernels/cross_entropy.cpp, parallel over rows. Out-of-range targets and valid_len are reported as
// errors before any kernel runs (on CPU reading them costs no device sync); the kernels never read out of bounds.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "cpu/dispatch.h"
#include "cpu/memory.h"
#include "cross_entropy_args.h"

S2S_CPU_KERNEL_TABLE(CrossEntropyKernels, cross_entropy_kernels)

namespace s2s_fused::cpu {
namespace {

// Rows per task: about 64K logits, so a task outweighs its scheduling cost.
int64_t ce_grain(int64_t V) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, V)); }

void check_valid_len_values(const CeArgs& a) {
  if (!a.valid_len.defined()) return;
  const int64_t* vl = a.valid_len.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < a.B; ++b) {
    TORCH_CHECK(vl[b] >= 0 && vl[b] <= a.T, "valid_len: expected values in [0, T=", a.T, "], got ", vl[b],
                " at index ", b);
  }
}

// Targets of unmasked positions must lie in [0, V): checked before any kernel runs (one pass over the int64
// targets; on CPU reading them costs no device sync). The kernels check again and never read out of bounds.
void check_target_values(const CeArgs& a) {
  const int64_t* tg = a.target.const_data_ptr<int64_t>();
  const int64_t* vl = a.valid_len.defined() ? a.valid_len.const_data_ptr<int64_t>() : nullptr;
  const auto& r = a.rows;
  for (int64_t n = 0; n < r.R; ++n) {
    const int64_t y = tg[n];
    if (y == r.ignore_index || (y >= 0 && y < r.V)) continue;
    if (vl && n % r.T >= vl[n / r.T]) continue;  // masked by valid_len: never read
    TORCH_CHECK(false, "target: expected class indices in [0, ", r.V, ") or ignore_index=", r.ignore_index, ", got ",
                y, " at flat position ", n);
  }
}

template <class Params, class Fn>
void run_rows(const Params& p, const CeArgs& a, Fn fn) {
  std::atomic<int64_t> first_bad{-1};
  at::parallel_for(0, p.rows.R, ce_grain(p.rows.V), [&](int64_t r0, int64_t r1) {
    const int64_t bad = fn(p, r0, r1);
    if (bad >= 0) {
      int64_t cur = first_bad.load();
      while ((cur < 0 || bad < cur) && !first_bad.compare_exchange_weak(cur, bad)) {
      }
    }
  });
  const int64_t bad = first_bad.load();
  TORCH_CHECK(bad < 0, "target: expected class indices in [0, ", p.rows.V, ") or ignore_index=",
              p.rows.ignore_index, ", got ", a.target.const_data_ptr<int64_t>()[std::max<int64_t>(bad, 0)],
              " at flat position ", bad);
}

std::tuple<at::Tensor, at::Tensor> masked_ce_forward_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                         const std::optional<at::Tensor>& valid_len,
                                                         int64_t ignore_index, double label_smoothing) {
  CeArgs a = ce_args(logits, target, valid_len, ignore_index, label_smoothing);
  check_valid_len_values(a);
  check_target_values(a);
  const auto opts = a.logits.options().dtype(ce_acc_dtype(a.logits.scalar_type()));
  at::Tensor loss = at::empty(a.target.sizes(), opts);
  at::Tensor lse = at::empty(a.target.sizes(), opts);
  CeForwardParams p;
  p.rows = a.rows;
  p.loss = loss.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr();
  run_rows(p, a, cross_entropy_kernels().forward);
  return {loss, lse};
}

at::Tensor masked_ce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                                  const std::optional<at::Tensor>& valid_len, const at::Tensor& lse_in,
                                  int64_t ignore_index, double label_smoothing) {
  CeArgs a = ce_args(logits, target, valid_len, ignore_index, label_smoothing);
  ce_check_backward(a, grad_loss, lse_in);
  check_valid_len_values(a);
  check_target_values(a);
  at::Tensor lse = lse_in.contiguous();
  at::Tensor grad = empty_buffer(a.logits.sizes(), a.logits.options().memory_format(at::MemoryFormat::Contiguous));
  CeBackwardParams p;
  p.rows = a.rows;
  p.lse = lse.const_data_ptr();
  p.grad_loss = grad_loss.const_data_ptr();
  ce_grad_strides(a, grad_loss, p.grad_stride_b, p.grad_stride_t);
  p.grad_logits = grad.mutable_data_ptr();
  run_rows(p, a, cross_entropy_kernels().backward);
  return grad;
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("masked_ce_forward", &s2s_fused::cpu::masked_ce_forward_cpu);
  m.impl("masked_ce_backward", &s2s_fused::cpu::masked_ce_backward_cpu);
}
