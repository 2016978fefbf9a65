// CUDA registration of beam_search_topk: checks, device guard, current stream, workspace; kernels in beam.cu.
// k > 64 takes the exact ATen path (log_softmax + add + stable sort), which is slower but gives the same answer.
//
// Only device-generic c10 headers here (c10::DeviceGuard and the guard implementation's current stream, which
// the CUDA runtime of torch provides): c10/cuda/* cannot be compiled against the CPU build of torch that CI uses
// for its syntax check (c10/cuda/impl/cuda_cmake_macros.h is missing there), and this file needs nothing more.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <limits>

#include "beam_checks.h"
#include "cuda/beam.cuh"

namespace s2s_fused::cuda {
namespace {

int dtype_code(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kHalf: return 2;
    case at::kBFloat16: return 3;
    default: TORCH_CHECK(false, "logits: unsupported dtype ", s);
  }
}

// The reference semantics with ATen ops (s2s_fused/reference.py), for k beyond the kernels' lists.
std::tuple<at::Tensor, at::Tensor, at::Tensor> exact_path(const at::Tensor& logits, const at::Tensor& beam_scores,
                                                          int64_t k, const std::optional<at::Tensor>& finished,
                                                          std::optional<int64_t> eos_id) {
  const int64_t B = logits.size(0), K = logits.size(1), V = logits.size(2);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double ninf = -std::numeric_limits<double>::infinity();
  auto s = beam_scores.to(acc).unsqueeze(-1);
  auto cand = s + at::log_softmax(logits.to(acc), -1);
  cand = at::where(s == ninf, at::full_like(cand, ninf), cand);
  if (finished.has_value() && finished->defined()) {
    auto only_eos = at::full_like(cand, ninf);
    only_eos.select(2, *eos_id).copy_(s.squeeze(-1));
    cand = at::where(finished->unsqueeze(-1), only_eos, cand);
  }
  auto [vals, idx] = at::sort(cand.reshape({B, K * V}), /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  vals = vals.narrow(1, 0, k).to(at::kFloat).contiguous();
  idx = idx.narrow(1, 0, k);
  return {vals, at::floor_divide(idx, V).contiguous(), at::remainder(idx, V).contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_topk_cuda(const at::Tensor& logits,
                                                                     const at::Tensor& beam_scores, int64_t k,
                                                                     const std::optional<at::Tensor>& finished,
                                                                     std::optional<int64_t> eos_id) {
  check_beam_topk_args(logits, beam_scores, k, finished, eos_id);
  const c10::DeviceGuard guard(logits.device());
  if (k > kBeamCudaMaxK) return exact_path(logits, beam_scores, k, finished, eos_id);
  const int64_t B = logits.size(0), K = logits.size(1), V = logits.size(2);
  auto scores = at::empty({B, k}, beam_scores.options());
  auto beam_index = at::empty({B, k}, beam_scores.options().dtype(at::kLong));
  auto token = at::empty({B, k}, beam_scores.options().dtype(at::kLong));
  if (B == 0) return {scores, beam_index, token};
  const auto bs = beam_scores.contiguous();
  at::Tensor fin;
  if (finished.has_value() && finished->defined()) fin = finished->contiguous();
  const int sms = device_sm_count(logits.device().index());
  TORCH_CHECK(sms > 0, "beam_search_topk: cannot query the multiprocessor count of ", logits.device());
  const BeamPlan plan = beam_plan(B * K, V, k, sms);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto o = logits.options();
  auto part_x = at::empty({B * K * plan.parts * plan.cap}, o.dtype(acc));
  auto part_v = at::empty({B * K * plan.parts * plan.cap}, o.dtype(at::kLong));
  auto part_m = at::empty({B * K * plan.parts}, o.dtype(acc));
  auto part_d = at::empty({B * K * plan.parts}, o.dtype(acc));
  auto lse = at::empty({B * K * 2}, o.dtype(acc));
  const c10::Stream stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(logits.device());
  const char* err = launch_beam_search_topk(
      dtype_code(logits.scalar_type()), logits.const_data_ptr(), logits.stride(0), logits.stride(1),
      logits.stride(2), bs.const_data_ptr<float>(), fin.defined() ? fin.const_data_ptr<bool>() : nullptr,
      eos_id.value_or(-1), B, K, V, k, plan, part_x.mutable_data_ptr(), part_v.mutable_data_ptr<int64_t>(),
      part_m.mutable_data_ptr(), part_d.mutable_data_ptr(), lse.mutable_data_ptr(), scores.mutable_data_ptr<float>(),
      beam_index.mutable_data_ptr<int64_t>(), token.mutable_data_ptr<int64_t>(), stream.native_handle());
  TORCH_CHECK(err == nullptr, "beam_search_topk: CUDA launch failed: ", err);
  return {scores, beam_index, token};
}

}  // namespace
}  // namespace s2s_fused::cuda

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) { m.impl("beam_search_topk", &s2s_fused::cuda::beam_search_topk_cuda); }
