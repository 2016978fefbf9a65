// The CUDA device of the RNN ops (the interface of csrc/rnn_device.h): the pointwise launchers of
// rnn_pointwise.cuh (both directions of a bidirectional layer in one launch), cuBLAS GEMMs through ATen (both
// directions in one strided-batched call) and the persistent small-batch kernel as its whole-sequence loop.
// Everything runs on the current stream; callers hold a device guard (Guard).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <span>

#include "config.h"
#include "cuda/rnn_pointwise.cuh"

namespace s2s_fused::cuda {

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "s2s_fused: CUDA launch of ", what, " failed: ", cudaGetErrorString(err));
}

struct CudaRnnPolicy {
  using Guard = c10::cuda::CUDAGuard;

  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(); }
  at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) const { return at::empty(sizes, options); }

  // out = a @ b (+ out when accumulate): cuBLAS through ATen. 3-D operands: one strided-batched GEMM over the
  // directions, whatever their direction stride (csrc/rnn_recurrence.h, step_blocks).
  void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (a.dim() == 3) {
      if (accumulate) out.baddbmm_(a, b); else at::bmm_out(out, a, b);
    } else {
      if (accumulate) out.addmm_(a, b); else at::mm_out(out, a, b);
    }
  }

  void lstm_forward(std::span<const LstmForwardParams> p, int64_t B) const {
    check_launch(cuda::lstm_forward(p.data(), p.size(), B, stream()), "lstm_forward");
  }
  void lstm_backward(std::span<const LstmBackwardParams> p, int64_t B) const {
    check_launch(cuda::lstm_backward(p.data(), p.size(), B, stream()), "lstm_backward");
  }
  void gru_forward(std::span<const GruForwardParams> p, int64_t B) const {
    check_launch(cuda::gru_forward(p.data(), p.size(), B, stream()), "gru_forward");
  }
  void gru_forward_stage2(std::span<const GruForwardParams> p, int64_t B) const {
    check_launch(cuda::gru_forward_stage2(p.data(), p.size(), B, stream()), "gru_forward_stage2");
  }
  void gru_backward(std::span<const GruBackwardParams> p, int64_t B) const {
    check_launch(cuda::gru_backward(p.data(), p.size(), B, stream()), "gru_backward");
  }
  void gru_backward_stage2(std::span<const GruBackwardParams> p, int64_t B) const {
    check_launch(cuda::gru_backward_stage2(p.data(), p.size(), B, stream()), "gru_backward_stage2");
  }

  // The input projections stay one cuBLAS GEMM over all steps, before the recurrence.
  bool projects_input(Dtype) const { return false; }

  // The persistent kernel, one launch per direction, where it applies (its limits: persistent_sequence);
  // S2S_FUSED_NO_PERSISTENT turns it off.
  bool run_sequence(const Sequence& q) const {
    if (config::on(config::Switch::NoPersistent)) return false;
    for (int64_t d = 0; d < q.D; ++d) {
      const cudaError_t err = persistent_sequence(q, d, stream());
      // Not supported is persistent_sequence's own answer, never a failed runtime call: nothing to clear (clearing
      // would also drop another launch's pending error). Every direction has the same sizes, so the answer is the
      // same for each.
      if (err == cudaErrorNotSupported) {
        TORCH_CHECK(d == 0, "s2s_fused: internal error: the persistent kernel ran one direction but not the other");
        return false;
      }
      check_launch(err, "persistent_sequence");
    }
    return true;
  }
  // Backward: the per-step loop (cuBLAS dh GEMMs + pointwise kernels).
  bool run_sequence_backward(const Sequence&, const SequenceGrads&) const { return false; }
};

}  // namespace s2s_fused::cuda
