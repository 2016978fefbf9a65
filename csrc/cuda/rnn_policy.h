// The CUDA device policy of rnn_cell_impl.h and rnn_layer_impl.h: the pointwise launchers of rnn_pointwise.cuh
// and cuBLAS GEMMs through ATen, everything on the current stream (callers hold a device guard).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>

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
    if (err == cudaErrorNotSupported) {
      (void)cudaGetLastError();  // clear the (non-sticky) error an attribute query may have recorded
      return false;
    }
    check_launch(err, "persistent_recurrence");
    return true;
  }
  at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) const { return at::empty(sizes, options); }
  // The input projections stay one cuBLAS GEMM over all steps, before the recurrence.
  bool fuses_input_projection(Dtype) const { return false; }
  // Backward: the per-step loop (cuBLAS dh GEMMs + pointwise kernels).
  bool persistent_backward(const PersistentBackwardParams&) const { return false; }
  // out = a @ b (+ out when accumulate): cuBLAS through ATen, on the current stream.
  void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (accumulate) out.addmm_(a, b); else at::mm_out(out, a, b);
  }
};

}  // namespace s2s_fused::cuda
