// The CUDA device policy of rnn_cell_impl.h and rnn_layer_impl.h: the pointwise launchers of rnn_pointwise.cuh
// and cuBLAS GEMMs through ATen, everything on the current stream (callers hold a device guard).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <functional>
#include <vector>

#include "cuda/rnn_graph.h"
#include "cuda/rnn_pointwise.cuh"

namespace s2s_fused::cuda {

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "s2s_fused: CUDA launch of ", what, " failed: ", cudaGetErrorString(err));
}

struct CudaRnnPolicy {
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(); }
  void lstm_forward(const LstmForwardParams& p, int64_t B) const {
    check_launch(cuda::lstm_forward(p, B, stream()), "lstm_forward");
  }
  void lstm_backward(const LstmBackwardParams& p, int64_t B) const {
    check_launch(cuda::lstm_backward(p, B, stream()), "lstm_backward");
  }
  void gru_forward(const GruForwardParams& p, int64_t B) const {
    check_launch(cuda::gru_forward(p, B, stream()), "gru_forward");
  }
  void gru_forward_stage2(const GruForwardParams& p, int64_t B) const {
    check_launch(cuda::gru_forward_stage2(p, B, stream()), "gru_forward_stage2");
  }
  void gru_backward(const GruBackwardParams& p, int64_t B) const {
    check_launch(cuda::gru_backward(p, B, stream()), "gru_backward");
  }
  void gru_backward_stage2(const GruBackwardParams& p, int64_t B) const {
    check_launch(cuda::gru_backward_stage2(p, B, stream()), "gru_backward_stage2");
  }
  // The whole recurrence in one persistent kernel where it applies (B <= 8, weights fit on chip); false: run
  // the per-step path. S2S_FUSED_NO_PERSISTENT=1 turns it off (A/B benchmarks, tests of both paths).
  bool persistent(const PersistentParams& p) const {
    const char* off = std::getenv("S2S_FUSED_NO_PERSISTENT");
    if (off != nullptr && off[0] == '1') return false;
    const cudaError_t err = persistent_recurrence(p, stream());
    // Not supported is persistent_recurrence's own answer, never a failed runtime call: nothing to clear (clearing
    // would also drop another launch's pending error).
    if (err == cudaErrorNotSupported) return false;
    check_launch(err, "persistent_recurrence");
    return true;
  }
  at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) const { return at::empty(sizes, options); }
  // The input projections stay one cuBLAS GEMM over all steps, before the recurrence.
  bool fuses_input_projection(Dtype) const { return false; }
  // Backward: the per-step loop (cuBLAS dh GEMMs + pointwise kernels).
  bool persistent_backward(const PersistentBackwardParams&) const { return false; }
  // Both directions of a bidirectional layer's step in one launch (csrc/rnn_bidir_impl.h).
  void lstm_forward_bidir(const LstmForwardParams& p0, const LstmForwardParams& p1, int64_t B) const {
    check_launch(cuda::lstm_forward_bidir(p0, p1, B, stream()), "lstm_forward_bidir");
  }
  void lstm_backward_bidir(const LstmBackwardParams& p0, const LstmBackwardParams& p1, int64_t B) const {
    check_launch(cuda::lstm_backward_bidir(p0, p1, B, stream()), "lstm_backward_bidir");
  }
  void gru_forward_bidir(const GruForwardParams& p0, const GruForwardParams& p1, int64_t B) const {
    check_launch(cuda::gru_forward_bidir(p0, p1, B, stream()), "gru_forward_bidir");
  }
  void gru_forward_stage2_bidir(const GruForwardParams& p0, const GruForwardParams& p1, int64_t B) const {
    check_launch(cuda::gru_forward_stage2_bidir(p0, p1, B, stream()), "gru_forward_stage2_bidir");
  }
  void gru_backward_bidir(const GruBackwardParams& p0, const GruBackwardParams& p1, int64_t B) const {
    check_launch(cuda::gru_backward_bidir(p0, p1, B, stream()), "gru_backward_bidir");
  }
  void gru_backward_stage2_bidir(const GruBackwardParams& p0, const GruBackwardParams& p1, int64_t B) const {
    check_launch(cuda::gru_backward_stage2_bidir(p0, p1, B, stream()), "gru_backward_stage2_bidir");
  }
  // out[d] = a[d] @ b[d] (+ out[d]) over a leading dimension of 2 (the directions): one strided-batched cuBLAS
  // GEMM. Operands may be strided (2, rows, cols) views with any direction stride (rnn_bidir_impl.h pair_view).
  void gemm_batched(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (accumulate) out.baddbmm_(a, b); else at::bmm_out(out, a, b);
  }
  // A layer's whole per-step loop: replayed as a CUDA graph when S2S_FUSED_CUDA_GRAPH=1 (rnn_graph.h; opt-in,
  // unmeasured), else run directly. The key gets the cuBLAS math flags, which change the kernels cuBLAS picks.
  template <class Key>
  void run_steps(const Key& key, const std::function<void()>& fn) const {
    if (!cuda_graph_enabled()) {
      fn();
      return;
    }
    std::vector<int64_t> shape = key.shape;
    const auto& ctx = at::globalContext();
    shape.push_back(static_cast<int64_t>(ctx.allowTF32CuBLAS()));
    shape.push_back(static_cast<int64_t>(ctx.allowFP16ReductionCuBLAS()));
    shape.push_back(static_cast<int64_t>(ctx.allowBF16ReductionCuBLAS()));
    StepGraphCache::instance().run(shape, key.ptrs, fn);
  }
  // out = a @ b (+ out when accumulate): cuBLAS through ATen, on the current stream.
  void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (accumulate) out.addmm_(a, b); else at::mm_out(out, a, b);
  }
};

}  // namespace s2s_fused::cuda
