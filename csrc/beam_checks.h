// Argument checks of beam_search_topk shared by the CPU and CUDA entry points (the Python wrapper checks first,
// with the same messages).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace s2s_fused {

inline void check_beam_topk_args(const at::Tensor& logits, const at::Tensor& beam_scores, int64_t k,
                                 const std::optional<at::Tensor>& finished, std::optional<int64_t> eos_id) {
  TORCH_CHECK(logits.dim() == 3, "logits: expected a 3-D tensor (B, K, V), got ", logits.dim(), "-D with shape ",
              logits.sizes());
  const auto s = logits.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
              "logits: expected a float32, float64, float16 or bfloat16 tensor, got ", s);
  const int64_t B = logits.size(0), K = logits.size(1), V = logits.size(2);
  TORCH_CHECK(beam_scores.scalar_type() == at::kFloat, "beam_scores: expected a float32 tensor, got ",
              beam_scores.scalar_type());
  TORCH_CHECK(beam_scores.dim() == 2 && beam_scores.size(0) == B && beam_scores.size(1) == K,
              "beam_scores: expected shape (", B, ", ", K, ") (logits' (B, K)), got ", beam_scores.sizes());
  TORCH_CHECK(beam_scores.device() == logits.device(), "beam_scores: expected device ", logits.device(),
              " (as logits), got ", beam_scores.device());
  TORCH_CHECK(k >= 1 && k <= K * V, "k: expected 1 <= k <= K*V = ", K * V, ", got ", k);
  if (finished.has_value() && finished->defined()) {
    TORCH_CHECK(finished->scalar_type() == at::kBool, "finished: expected a bool tensor, got ",
                finished->scalar_type());
    TORCH_CHECK(finished->dim() == 2 && finished->size(0) == B && finished->size(1) == K,
                "finished: expected shape (", B, ", ", K, ") (logits' (B, K)), got ", finished->sizes());
    TORCH_CHECK(finished->device() == logits.device(), "finished: expected device ", logits.device(),
                " (as logits), got ", finished->device());
    TORCH_CHECK(eos_id.has_value(), "eos_id: required when finished is given, got None");
  }
  if (eos_id.has_value()) {
    TORCH_CHECK(*eos_id >= 0 && *eos_id < V, "eos_id: expected 0 <= eos_id < V = ", V, ", got ", *eos_id);
  }
}

}  // namespace s2s_fused
