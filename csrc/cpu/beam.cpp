// CPU registration of beam_search_topk: stage 1 (csrc/cpu/kernels/beam.cpp, capability-selected) in parallel over
// the B*K beam rows, then a K-way merge of the per-row sorted candidate lists in parallel over batch rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "beam_checks.h"
#include "beam_topk.h"
#include "checks.h"
#include "cpu/dispatch.h"

S2S_CPU_KERNEL_TABLE(BeamKernels, beam_kernels)

namespace s2s_fused::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_topk_cpu(const at::Tensor& logits_in,
                                                                    const at::Tensor& beam_scores, int64_t k,
                                                                    const std::optional<at::Tensor>& finished,
                                                                    std::optional<int64_t> eos_id) {
  check_beam_topk_args(logits_in, beam_scores, k, finished, eos_id);
  const int64_t B = logits_in.size(0), K = logits_in.size(1), V = logits_in.size(2);
  auto scores = at::empty({B, k}, beam_scores.options());
  auto beam_index = at::empty({B, k}, beam_scores.options().dtype(at::kLong));
  auto token = at::empty({B, k}, beam_scores.options().dtype(at::kLong));
  if (B == 0) return {scores, beam_index, token};
  // The kernel reads rows with arbitrary (b, i) strides but a contiguous vocabulary dimension.
  const at::Tensor logits = logits_in.stride(2) == 1 || V == 1 ? logits_in : logits_in.contiguous();
  const at::Tensor bs = beam_scores.contiguous();
  at::Tensor fin;
  if (finished.has_value() && finished->defined()) fin = finished->contiguous();
  const int64_t kk = std::min(k, V);
  auto cand_score = at::empty({B * K, kk}, beam_scores.options().dtype(at::kDouble));
  auto cand_index = at::empty({B * K, kk}, beam_scores.options().dtype(at::kLong));

  BeamRowParams p;
  p.dtype = to_dtype(logits.scalar_type());
  p.logits = logits.const_data_ptr();
  p.stride_b = logits.stride(0);
  p.stride_k = logits.stride(1);
  p.beam_scores = bs.const_data_ptr<float>();
  p.finished = fin.defined() ? reinterpret_cast<const uint8_t*>(fin.const_data_ptr<bool>()) : nullptr;
  p.eos_id = eos_id.value_or(-1);
  p.K = K;
  p.V = V;
  p.kk = kk;
  p.exact = k > kBeamFastMaxK;
  p.cand_score = cand_score.mutable_data_ptr<double>();
  p.cand_index = cand_index.mutable_data_ptr<int64_t>();
  const auto& kern = beam_kernels();
  // One row is ~V element visits; aim for tasks of >= 32K elements.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, V));
  at::parallel_for(0, B * K, grain, [&](int64_t r0, int64_t r1) { kern.beam_rows(p, r0, r1); });

  // Stage 2: merge the K sorted lists of each batch row (they cover disjoint, increasing flat-index ranges).
  float* out_s = scores.mutable_data_ptr<float>();
  int64_t* out_b = beam_index.mutable_data_ptr<int64_t>();
  int64_t* out_t = token.mutable_data_ptr<int64_t>();
  const double* cs = p.cand_score;
  const int64_t* ci = p.cand_index;
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, k * K)), [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> head(K);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(head.begin(), head.end(), 0);
      const double* rs = cs + b * K * kk;
      const int64_t* ri = ci + b * K * kk;
      for (int64_t j = 0; j < k; ++j) {
        int64_t best = -1;
        for (int64_t i = 0; i < K; ++i) {
          if (head[i] >= kk) continue;
          const int64_t c = i * kk + head[i];
          if (best < 0 || beam_rank_before(rs[c], ri[c], rs[best * kk + head[best]], ri[best * kk + head[best]])) {
            best = i;
          }
        }
        const int64_t c = best * kk + head[best]++;
        out_s[b * k + j] = static_cast<float>(rs[c]);
        out_b[b * k + j] = ri[c] / V;
        out_t[b * k + j] = ri[c] % V;
      }
    }
  });
  return {scores, beam_index, token};
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) { m.impl("beam_search_topk", &s2s_fused::cpu::beam_search_topk_cpu); }

// The op is a discrete selection: its outputs carry no gradient (for every device key), so autograd passes
// through instead of warning that no autograd kernel exists.
TORCH_LIBRARY_IMPL(s2s_fused, Autograd, m) { m.impl("beam_search_topk", torch::CppFunction::makeFallthrough()); }
