// CUDA registration of the attention ops (additive and dot): tensor checks, query projection and weight-gradient GEMMs
// (csrc/attention_args.h; nothing reads tensor values, so no device sync), device guard, current stream, and the
// launchers of csrc/cuda/attention.cu. valid_len outside [0, S] is reported by the kernels as NaN, not raised.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "attention_args.h"
#include "cuda/attention_cuda.h"

namespace s2s_fused::cuda {
namespace {

cudaStream_t current_stream(const at::Tensor& t) {
  const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device());
  return static_cast<cudaStream_t>(s.native_handle());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> additive_attention_forward_cuda(
    const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& w_q,
    const at::Tensor& v, const at::Tensor& valid_len) {
  const c10::DeviceGuard guard(query.device());
  AttnArgs a = attn_args(query, keys, values, w_q, v, valid_len);
  TORCH_CHECK(query.is_cuda(), "query: expected a CUDA tensor, got ", query.device());
  at::Tensor qp = attn_query_proj(a);
  auto [context, weights] = attn_forward_outputs(a);
  const auto p = attn_forward_params(a, qp, context, weights);
  check_launch(attention_forward_launch(p, current_stream(query)), "additive_attention_forward");
  return {context, weights, qp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> additive_attention_backward_cuda(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_weights, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, const at::Tensor& w_q, const at::Tensor& v,
    const at::Tensor& valid_len, const at::Tensor& query_proj) {
  const c10::DeviceGuard guard(query.device());
  AttnArgs a = attn_args(query, keys, values, w_q, v, valid_len);
  TORCH_CHECK(query.is_cuda(), "query: expected a CUDA tensor, got ", query.device());
  const at::Tensor gw = contiguous_or_undefined(grad_weights);
  attn_check_backward(a, grad_context, gw, query_proj);
  const at::Tensor g = grad_context.contiguous(), qp = query_proj.contiguous();
  AttnBackwardOutputs o = attn_backward_outputs(a);
  const auto p = attn_backward_params(a, g, gw, qp, o);
  check_launch(attention_backward_launch(p, current_stream(query)), "additive_attention_backward");
  return attn_finish_backward(a, o);
}

std::tuple<at::Tensor, at::Tensor> dot_attention_forward_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                              const at::Tensor& values, const at::Tensor& valid_len) {
  const c10::DeviceGuard guard(query.device());
  AttnArgs a = dot_attn_args(query, keys, values, valid_len);
  TORCH_CHECK(query.is_cuda(), "query: expected a CUDA tensor, got ", query.device());
  const at::Tensor qp = attn_query_proj(a);
  auto [context, weights] = attn_forward_outputs(a);
  const auto p = attn_forward_params(a, qp, context, weights);
  check_launch(attention_forward_launch(p, current_stream(query)), "dot_attention_forward");
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_attention_backward_cuda(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_weights, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, const at::Tensor& valid_len) {
  const c10::DeviceGuard guard(query.device());
  AttnArgs a = dot_attn_args(query, keys, values, valid_len);
  TORCH_CHECK(query.is_cuda(), "query: expected a CUDA tensor, got ", query.device());
  const at::Tensor gw = contiguous_or_undefined(grad_weights);
  attn_check_grads(a, grad_context, gw);
  const at::Tensor g = grad_context.contiguous(), qp = attn_query_proj(a);
  AttnBackwardOutputs o = attn_backward_outputs(a);
  const auto p = attn_backward_params(a, g, gw, qp, o);
  check_launch(attention_backward_launch(p, current_stream(query)), "dot_attention_backward");
  return dot_attn_finish_backward(a, o);
}

}  // namespace
}  // namespace s2s_fused::cuda

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) {
  m.impl("additive_attention_forward", &s2s_fused::cuda::additive_attention_forward_cuda);
  m.impl("additive_attention_backward", &s2s_fused::cuda::additive_attention_backward_cuda);
  m.impl("dot_attention_forward", &s2s_fused::cuda::dot_attention_forward_cuda);
  m.impl("dot_attention_backward", &s2s_fused::cuda::dot_attention_backward_cuda);
}
