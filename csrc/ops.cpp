// The s2s_fused op library: every schema, once. CPU kernels register in csrc/cpu/<family>.cpp, CUDA kernels in
// csrc/cuda/<family>_binding.cpp, Triton launchers from Python (s2s_fused/triton/<family>.py). The Python side
// (s2s_fused/ops/<family>.py) adds the fake kernels and autograd.
#include <Python.h>
#include <torch/library.h>

#include "cpu/dispatch.h"

#ifndef S2S_CUDA_ARCH_LIST
#define S2S_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(s2s_fused, m) {
  // ---------------------------------------------------------------- rnn_cell (one LSTM / GRU step)
  // workspace = the activated gates backward needs: LSTM (B, 4H) = (i, f, g, o); GRU reset_after (B, 4H) =
  // (r, z, n, W_hn h + b_hn); GRU reset_before (B, 3H) = (r, z, n).
  m.def(
      "lstm_cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor h1, Tensor c1, Tensor workspace)");
  m.def(
      "lstm_cell_backward(Tensor? grad_h1, Tensor? grad_c1, Tensor input, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor workspace, Tensor c1) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
  m.def(
      "gru_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool reset_after) -> (Tensor h1, Tensor workspace)");
  m.def(
      "gru_cell_backward(Tensor grad_h1, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor workspace, "
      "bool reset_after) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh)");

  // ---------------------------------------------------------------- rnn_layer (whole sequences)
  // (schemas added by the rnn_layer issue)

  // ---------------------------------------------------------------- cross_entropy
  // logits (N, V) or (B, T, V), any strides; target int64 shaped as logits without V; valid_len int64 (B,) (3-D
  // only). loss, lse: per position, shaped as target, float32 (float64 for float64 logits); 0 where masked.
  // Backward: grad_loss shaped as target (any strides, stride 0 included) -> grad_logits, contiguous, logits'
  // dtype. Reductions are O(N) torch ops around these (s2s_fused/ops/cross_entropy.py).
  m.def(
      "masked_ce_forward(Tensor logits, Tensor target, Tensor? valid_len, int ignore_index, "
      "float label_smoothing) -> (Tensor loss, Tensor lse)");
  m.def(
      "masked_ce_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor? valid_len, Tensor lse, "
      "int ignore_index, float label_smoothing) -> Tensor");

  // ---------------------------------------------------------------- beam
  // (schemas added by the beam-search issue)

  // ---------------------------------------------------------------- end of schemas
}

// ------------------------------------------------------------------ the Python module stub
// `import s2s_fused._C` runs the static registrations above; the module itself only carries build facts.
namespace {

PyObject* build_info(PyObject*, PyObject*) {
  using s2s_fused::cpu::Capability;
  using s2s_fused::cpu::capability_name;
  using s2s_fused::cpu::runtime_capability;
  PyObject* compiled_caps = PyList_New(0);
  PyList_Append(compiled_caps, PyUnicode_FromString("DEFAULT"));
#if defined(S2S_HAVE_CAPABILITY_AVX2)
  PyList_Append(compiled_caps, PyUnicode_FromString("AVX2"));
#endif
#if defined(S2S_HAVE_CAPABILITY_AVX512)
  PyList_Append(compiled_caps, PyUnicode_FromString("AVX512"));
#endif
#if defined(S2S_WITH_CUDA)
  PyObject* with_cuda = Py_True;
#else
  PyObject* with_cuda = Py_False;
#endif
  return Py_BuildValue("{s:O,s:s,s:N,s:s}", "with_cuda", with_cuda, "cuda_arch_list", S2S_CUDA_ARCH_LIST,
                       "cpu_capabilities_compiled", compiled_caps, "cpu_capability",
                       capability_name(runtime_capability()));
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "Facts about this build of the extension."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "s2s_fused compiled ops (see torch.ops.s2s_fused)", -1,
                      methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
