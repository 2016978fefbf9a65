// The LSTM / GRU cell math on the GPU, written once: the pointwise kernels (rnn_pointwise.cu), the fused one-kernel
// cell step (same file) and the persistent sequence kernel (rnn_persistent.cu) all call these. Values are in the
// accumulate type A: float, double for double inputs. Plain CUDA, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/acc.cuh"

namespace s2s_fused::cuda {

// Element i of an optional vector (a bias); a null one reads as zero.
template <typename T>
__device__ __forceinline__ acc_t<T> element_or_zero(const void* v, int64_t i) {
  return v ? to_acc(static_cast<const T*>(v)[i]) : acc_t<T>(0);
}

template <typename A> __device__ __forceinline__ A sigmoid(A x) { return A(1) / (A(1) + exp(-x)); }

// LSTM forward from the gate pre-activations: the activated gates i, f, g, o, the cell state c and the output h.
template <typename A>
struct LstmStep {
  A i, f, g, o, c, h;
};
template <typename A>
__device__ __forceinline__ LstmStep<A> lstm_step(A pre_i, A pre_f, A pre_g, A pre_o, A cx) {
  LstmStep<A> s;
  s.i = sigmoid(pre_i);
  s.f = sigmoid(pre_f);
  s.g = tanh(pre_g);
  s.o = sigmoid(pre_o);
  s.c = s.f * cx + s.i * s.g;
  s.h = s.o * tanh(s.c);
  return s;
}

// LSTM backward from the activated gates, cx, c1 and the incoming dh, dc: the pre-activation gate gradients and
// the gradient of cx.
template <typename A>
struct LstmGrads {
  A di, df, dg, d_o, dcx;
};
template <typename A>
__device__ __forceinline__ LstmGrads<A> lstm_grads(A i, A f, A g, A o, A cx, A c1, A dh, A dc_in) {
  const A tc = tanh(c1);
  const A dc = dc_in + dh * o * (A(1) - tc * tc);
  return {dc * g * i * (A(1) - i), dc * cx * f * (A(1) - f), dc * i * (A(1) - g * g), dh * tc * o * (A(1) - o),
          dc * f};
}

// GRU: the new state from n, z and the previous state.
template <typename A> __device__ __forceinline__ A gru_state(A n, A z, A hx) { return n + z * (hx - n); }

// GRU reset_after forward: r, z from their pre-activations, n = tanh(n_in + r * hn) with n_in = W_in x + b_in and
// hn = W_hn h + b_hn, and the new state.
template <typename A>
struct GruStep {
  A r, z, n, h;
};
template <typename A>
__device__ __forceinline__ GruStep<A> gru_reset_after_step(A pre_r, A pre_z, A n_in, A hn, A hx) {
  GruStep<A> s;
  s.r = sigmoid(pre_r);
  s.z = sigmoid(pre_z);
  s.n = tanh(n_in + s.r * hn);
  s.h = gru_state(s.n, s.z, hx);
  return s;
}

// GRU backward, the parts every variant shares: the pre-activation gradients of z and n.
template <typename A>
struct GruGrads {
  A dz, dn;
};
template <typename A>
__device__ __forceinline__ GruGrads<A> gru_grads(A z, A n, A hx, A dh) {
  return {dh * (hx - n) * z * (A(1) - z), dh * (A(1) - z) * (A(1) - n * n)};
}

// The pre-activation gradient of r from the gradient reaching r's product (r * hn or r * h): d(r * v) * v * r'(.).
template <typename A> __device__ __forceinline__ A gru_dr(A d_rv, A v, A r) { return d_rv * v * r * (A(1) - r); }

}  // namespace s2s_fused::cuda
