// The s2s_fused op library: every schema, once. CPU kernels register in csrc/cpu/<family>.cpp, CUDA kernels in
// csrc/cuda/<family>_binding.cpp, Triton launchers from Python (s2s_fused/triton/<family>.py). The Python side
// (s2s_fused/ops/<family>.py) adds the fake kernels and autograd.
#include <Python.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <atomic>

#include "config.h"
#include "cpu/cpu_path.h"
#include "cpu/dispatch.h"
#include "cpu/memory.h"
#include "cpu/rnn_policy.h"

// The CUDA archs compiled, as setup.py handed them to torch (TORCH_CUDA_ARCH_LIST); empty in a CPU-only build.
#ifndef S2S_CUDA_ARCH_LIST
#define S2S_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(s2s_fused, m) {
  // ---------------------------------------------------------------- rnn_cell (one LSTM / GRU step)
  // Backward ops take grad_mask, one flag per output: a gradient nobody needs is not computed (its GEMM is
  // skipped) and comes back as an empty (0-element) tensor.
  // workspace = the activated gates backward needs: LSTM (B, 4H) = (i, f, g, o); GRU reset_after (B, 4H) =
  // (r, z, n, W_hn h + b_hn); GRU reset_before (B, 3H) = (r, z, n).
  m.def(
      "lstm_cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor h1, Tensor c1, Tensor workspace)");
  m.def(
      "lstm_cell_backward(Tensor? grad_h1, Tensor? grad_c1, Tensor input, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor workspace, Tensor c1, bool[6] grad_mask) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
  m.def(
      "gru_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool reset_after) -> (Tensor h1, Tensor workspace)");
  m.def(
      "gru_cell_backward(Tensor grad_h1, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor workspace, "
      "bool reset_after, bool[6] grad_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");

  // ---------------------------------------------------------------- rnn_layer (whole sequences)
  // One layer in one direction over a whole (T, B, I) sequence (the modules stack layers and directions).
  // lengths (B,) optional: step t of row b runs when t < lengths[b]; other steps keep the state and output zeros.
  // reverse runs t = T-1 .. 0. hs, cs (T+1, B, H): the states in time layout (csrc/rnn_core.h, TimeLayout);
  // workspace: the activated gates of every step, as the rnn_cell ops define it, (T, B, 4H) or (T, B, 3H).
  // w_hr (P, H): an LSTM with projections (torch's proj_size), h = W_hr (o * tanh c): then h0, h_n, output, hs
  // and grad_h_n are P wide, w_hh is (4H, P) and H is w_hr's second dim; without it grad_w_hr is empty (0,).
  m.def(
      "lstm_layer_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? lengths, bool reverse, Tensor? w_hr=None) -> (Tensor output, Tensor h_n, Tensor c_n, "
      "Tensor hs, Tensor cs, Tensor workspace)");
  m.def(
      "lstm_layer_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, Tensor w_ih, "
      "Tensor w_hh, Tensor hs, Tensor cs, Tensor workspace, Tensor? lengths, bool reverse, Tensor? w_hr=None) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, "
      "Tensor grad_w_hr)");
  m.def(
      "gru_layer_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse, bool reset_after) -> (Tensor output, Tensor h_n, Tensor hs, "
      "Tensor workspace)");
  m.def(
      "gru_layer_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, Tensor w_ih, Tensor w_hh, "
      "Tensor hs, Tensor workspace, Tensor? lengths, bool reverse, bool reset_after) -> (Tensor grad_input, "
      "Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  // Inference: the forward with nothing saved for backward (no workspace or state history is written).
  m.def(
      "lstm_layer_inference(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? lengths, bool reverse, Tensor? w_hr=None) -> (Tensor output, Tensor h_n, "
      "Tensor c_n)");
  m.def(
      "gru_layer_inference(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse, bool reset_after) -> (Tensor output, Tensor h_n)");

  // ---------------------------------------------------------------- rnn_layer_bidir
  // Both directions of one bidirectional layer in one op (csrc/rnn_recurrence.h with D = 2): step s runs the
  // forward direction at time s and the reverse one at time T-1-s together (one batched recurrent GEMM and one
  // pointwise launch per step on CUDA). h0, c0, h_n, c_n (2, B, H) direction-major; output (T, B, 2H) = the two
  // directions' outputs concatenated; hs, cs (2, T+1, B, H) and workspace (2, T, B, W) (csrc/rnn_core.h):
  // direction d's slice is what the single-direction op returns for reverse = (d == 1). Backward returns
  // grad_h0/grad_c0 (2, B, H) and each direction's weight gradients (the _r ones: reverse).
  m.def(
      "lstm_layer_bidir_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor hs, Tensor cs, Tensor workspace)");
  m.def(
      "lstm_layer_bidir_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, "
      "Tensor w_ih, Tensor w_hh, Tensor w_ih_r, Tensor w_hh_r, Tensor hs, Tensor cs, Tensor workspace, "
      "Tensor? lengths) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_ih_r, Tensor grad_w_hh_r, Tensor grad_bias_r)");
  m.def(
      "gru_layer_bidir_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, Tensor? lengths, bool reset_after) -> "
      "(Tensor output, Tensor h_n, Tensor hs, Tensor workspace)");
  m.def(
      "gru_layer_bidir_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, Tensor w_ih, Tensor w_hh, "
      "Tensor w_ih_r, Tensor w_hh_r, Tensor hs, Tensor workspace, Tensor? lengths, bool reset_after) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh, Tensor grad_w_ih_r, Tensor grad_w_hh_r, Tensor grad_b_ih_r, Tensor grad_b_hh_r)");

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
  // One beam-search step: the best k of the K*V candidates (beam i, token v) per batch row, scored
  // beam_scores[b, i] + log_softmax(logits[b, i])[v] in fp32 (fp64 for fp64 logits), ties to the lower i*V + v.
  // A finished beam offers only (its score, eos_id); -inf beams only -inf candidates. See s2s_fused/ops/beam.py.
  m.def(
      "beam_search_topk(Tensor logits, Tensor beam_scores, int k, Tensor? finished=None, int? eos_id=None) "
      "-> (Tensor scores, Tensor beam_index, Tensor token)");

  // ---------------------------------------------------------------- attention
  // Additive (Bahdanau) attention of one decoder step (csrc/attention.h): query (N, Hq), keys (B, S, H) already
  // projected, values (B, S, Dv), w_q (H, Hq), v (H,), valid_len (B,) int64 in [0, S] (0: uniform weights);
  // N = R*B, R >= 1: query row n attends source row n / R (R beams share one copy of their sentence's keys).
  // context (N, Dv) and weights (N, S) in the inputs' dtype; query_proj = query W_q^T (N, H) in the accumulate
  // type (fp32; fp64 for fp64), saved for backward, which recomputes the scores from it. grad_keys and
  // grad_values sum over the R query rows of each source row.
  m.def(
      "additive_attention_forward(Tensor query, Tensor keys, Tensor values, Tensor w_q, Tensor v, "
      "Tensor valid_len) -> (Tensor context, Tensor weights, Tensor query_proj)");
  m.def(
      "additive_attention_backward(Tensor grad_context, Tensor? grad_weights, Tensor query, Tensor keys, "
      "Tensor values, Tensor w_q, Tensor v, Tensor valid_len, Tensor query_proj) -> (Tensor grad_query, "
      "Tensor grad_keys, Tensor grad_values, Tensor grad_w_q, Tensor grad_v)");
  // Dot (Luong) attention, the same rows and masking: score_s = query . keys_s (keys (B, S, Hq); Luong's "general"
  // score over keys projected once per source). Backward recomputes the scores from query.
  m.def(
      "dot_attention_forward(Tensor query, Tensor keys, Tensor values, Tensor valid_len) -> (Tensor context, "
      "Tensor weights)");
  m.def(
      "dot_attention_backward(Tensor grad_context, Tensor? grad_weights, Tensor query, Tensor keys, Tensor values, "
      "Tensor valid_len) -> (Tensor grad_query, Tensor grad_keys, Tensor grad_values)");

  // ---------------------------------------------------------------- end of schemas
}

// ------------------------------------------------------------------ the Python module stub
// `import s2s_fused._C` runs the static registrations above; the module itself only carries build facts.
namespace {

// Reads the switches (csrc/config.h) if not yet read; false, with a Python ValueError set, when one has a bad value.
bool read_switches() {
  try {
    s2s_fused::config::switches();
    return true;
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return false;
  }
}

PyObject* build_info(PyObject*, PyObject*) {
  if (!read_switches()) return nullptr;
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
  // How many chunks our own at::parallel_for splits work into right now (its OpenMP pragma is compiled into this
  // extension: 1 with torch's thread count above 1 means the build lost -fopenmp and every CPU loop runs serially).
  std::atomic<int> chunks{0};
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) { chunks.fetch_add(1); });
  // The S2S_FUSED_* switches the library reads (csrc/config.h), as they stand.
  PyObject* switches = PyDict_New();
  for (size_t i = 0; i < s2s_fused::config::kSwitchNames.size(); ++i) {
    PyDict_SetItemString(switches, s2s_fused::config::kSwitchNames[i],
                         s2s_fused::config::on(static_cast<s2s_fused::config::Switch>(i)) ? Py_True : Py_False);
  }
  // torch_version: the torch whose headers this was compiled against; a prebuilt extension loaded by another
  // torch may import and then crash (its C++ ABI is not versioned), so loaders compare it with torch.__version__.
  return Py_BuildValue("{s:O,s:s,s:s,s:N,s:s,s:i,s:N,s:s}", "with_cuda", with_cuda, "cuda_arch_list",
                       S2S_CUDA_ARCH_LIST, "torch_version", TORCH_VERSION, "cpu_capabilities_compiled", compiled_caps,
                       "cpu_capability", capability_name(runtime_capability()), "parallel_for_chunks", chunks.load(),
                       "switches", switches, "cpu_path", s2s_fused::cpu::path_name(s2s_fused::config::cpu_path()));
}

// _set_switch(name, on) -> the previous setting (csrc/config.h).
PyObject* set_switch(PyObject*, PyObject* args) {
  const char* name = nullptr;
  int on = 0;
  if (!PyArg_ParseTuple(args, "sp", &name, &on) || !read_switches()) return nullptr;
  const s2s_fused::config::Switch s = s2s_fused::config::find(name);
  if (s == s2s_fused::config::Switch::Count) {
    PyErr_Format(PyExc_KeyError, "%s: not a switch of the compiled library (see build_info()['switches'])", name);
    return nullptr;
  }
  return PyBool_FromLong(s2s_fused::config::set(s, on != 0));
}

// _set_check_gemm_tails(bool) -> the previous setting of S2S_FUSED_CHECK_GEMM_TAILS (the test session's switch).
PyObject* set_check_gemm_tails(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0 || !read_switches()) return nullptr;
  return PyBool_FromLong(s2s_fused::config::set(s2s_fused::config::Switch::CheckGemmTails, on != 0));
}

// _set_cpu_path(name) -> the previous setting of S2S_FUSED_CPU_PATH (csrc/cpu/cpu_path.h).
PyObject* set_cpu_path(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name) || !read_switches()) return nullptr;
  const s2s_fused::config::CpuPath p = s2s_fused::config::find_cpu_path(name);
  if (p == s2s_fused::config::CpuPath::Count) {
    PyErr_Format(PyExc_ValueError, "%s: expected %s, got '%s'", s2s_fused::config::kCpuPathVariable,
                 s2s_fused::config::cpu_path_list(true).c_str(), name);
    return nullptr;
  }
  return PyUnicode_FromString(s2s_fused::cpu::path_name(s2s_fused::config::set_cpu_path(p)));
}

// _cpu_path_state() -> {"path": the setting, "candidates": the paths an fp32 op can take on this machine (oneDNN's
// only where ATen's matmul runs fp32 here; packed-units only with more than one thread, and only for layer
// forwards), "choices": {key: {"path": chosen, "times_us": {path: best time}}},
// "packed_weights": {"entries", "bytes", "hits", "misses"}}: what the CPU path choice has done in this process.
PyObject* cpu_path_state(PyObject*, PyObject*) {
  if (!read_switches()) return nullptr;
  using s2s_fused::cpu::path_name;
  PyObject* choices = PyDict_New();
  for (const auto& [key, c] : s2s_fused::cpu::path_choices().all()) {
    PyObject* times = PyDict_New();
    for (const auto& [p, us] : c.times_us) {
      PyObject* t = PyFloat_FromDouble(us);
      PyDict_SetItemString(times, path_name(p), t);
      Py_DECREF(t);
    }
    PyObject* entry = Py_BuildValue("{s:s,s:N}", "path", path_name(c.path), "times_us", times);
    PyDict_SetItemString(choices, key.c_str(), entry);
    Py_DECREF(entry);
  }
  PyObject* candidates = PyList_New(0);
  for (const auto p : s2s_fused::cpu::path_candidates(at::kFloat, at::get_num_threads() > 1)) {
    PyObject* name = PyUnicode_FromString(path_name(p));
    PyList_Append(candidates, name);
    Py_DECREF(name);
  }
  const auto w = s2s_fused::cpu::packed_weights().stats();
  return Py_BuildValue("{s:s,s:N,s:N,s:{s:L,s:L,s:L,s:L}}", "path", path_name(s2s_fused::config::cpu_path()),
                       "candidates", candidates, "choices", choices, "packed_weights", "entries",
                       (long long)w.entries, "bytes", (long long)w.bytes, "hits", (long long)w.hits, "misses",
                       (long long)w.misses);
}

// _clear_cpu_path_state(): forget the choices and the packed weights (tests; a re-measure after a change of load).
PyObject* clear_cpu_path_state(PyObject*, PyObject*) {
  s2s_fused::cpu::path_choices().clear();
  s2s_fused::cpu::packed_weights().clear();
  Py_RETURN_NONE;
}

// _load_cpu_path_choices({key: path}) -> how many were taken: choices kept from earlier processes
// (s2s_fused/_cpu_path_cache.py). A key this process has already chosen keeps its choice; an entry whose path is
// not a path of kCpuPathNames (auto is none) is skipped (a hand-edited or newer file), so a bad file can cost
// speed, never a crash.
PyObject* load_cpu_path_choices(PyObject*, PyObject* arg) {
  if (!PyDict_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "choices: expected a dict {key: path name}, got %s", Py_TYPE(arg)->tp_name);
    return nullptr;
  }
  using s2s_fused::config::CpuPath;
  auto& choices = s2s_fused::cpu::path_choices();
  long long taken = 0;
  PyObject *key = nullptr, *value = nullptr;
  Py_ssize_t pos = 0;
  while (PyDict_Next(arg, &pos, &key, &value)) {
    if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) continue;
    const char* k = PyUnicode_AsUTF8(key);
    const char* v = PyUnicode_AsUTF8(value);
    if (k == nullptr || v == nullptr) return nullptr;
    const CpuPath p = s2s_fused::config::find_cpu_path(v);
    if (p == CpuPath::Count || p == CpuPath::Auto || choices.find(k)) continue;
    choices.record(k, {p, {}});
    ++taken;
  }
  return PyLong_FromLongLong(taken);
}

// _cpu_path() -> (the setting of S2S_FUSED_CPU_PATH now: a name of kCpuPathNames; whether oneDNN may run:
// torch has it and S2S_FUSED_NO_ONEDNN is off). Cheap, for per-call use.
PyObject* cpu_path_setting(PyObject*, PyObject*) {
  if (!read_switches()) return nullptr;
  const bool onednn = at::hasMKLDNN() && !s2s_fused::config::on(s2s_fused::config::Switch::NoOnednn);
  return Py_BuildValue("(sO)", s2s_fused::cpu::path_name(s2s_fused::config::cpu_path()),
                       onednn ? Py_True : Py_False);
}

// _record_cpu_path_choice(key, path, {path: best microseconds}): a choice measured on the Python side (the seq2seq
// decoder's inference GEMMs, s2s_fused/_cpu_linear.py), kept with the C++ ops' own: shown by `info`, saved to the
// choices file at exit like them (which needs the times). A key already chosen keeps its choice.
PyObject* record_cpu_path_choice(PyObject*, PyObject* args) {
  const char* key = nullptr;
  const char* name = nullptr;
  PyObject* times = nullptr;
  if (!PyArg_ParseTuple(args, "ssO!", &key, &name, &PyDict_Type, &times)) return nullptr;
  using s2s_fused::config::CpuPath;
  const CpuPath p = s2s_fused::config::find_cpu_path(name);
  if (p == CpuPath::Count || p == CpuPath::Auto) {
    PyErr_Format(PyExc_ValueError, "path: expected %s, got '%s'", s2s_fused::config::cpu_path_list(false).c_str(),
                 name);
    return nullptr;
  }
  s2s_fused::cpu::PathChoice choice{p, {}};
  PyObject *k = nullptr, *v = nullptr;
  Py_ssize_t pos = 0;
  while (PyDict_Next(times, &pos, &k, &v)) {
    const char* tn = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : nullptr;
    const CpuPath tp = tn ? s2s_fused::config::find_cpu_path(tn) : CpuPath::Count;
    const double us = PyFloat_Check(v) ? PyFloat_AsDouble(v) : -1.0;
    if (tp == CpuPath::Count || tp == CpuPath::Auto || !(us >= 0.0)) {
      PyErr_SetString(PyExc_ValueError, "times: expected {path name: microseconds >= 0}");
      return nullptr;
    }
    choice.times_us.emplace_back(tp, us);
  }
  auto& choices = s2s_fused::cpu::path_choices();
  if (!choices.find(key)) choices.record(key, std::move(choice));
  Py_RETURN_NONE;
}

// _cpu_buffer_cache_state() -> {"enabled", "free_blocks", "free_bytes", "live_blocks", "live_bytes", "hits",
// "misses"}: the CPU buffer cache (csrc/cpu/memory.h); enabled unless S2S_FUSED_NO_BUFFER_CACHE is on.
PyObject* cpu_buffer_cache_state(PyObject*, PyObject*) {
  if (!read_switches()) return nullptr;
  const auto s = s2s_fused::cpu::BufferCache::get().stats();
  const bool enabled = !s2s_fused::config::on(s2s_fused::config::Switch::NoBufferCache);
  return Py_BuildValue("{s:O,s:L,s:L,s:L,s:L,s:L,s:L}", "enabled", enabled ? Py_True : Py_False, "free_blocks",
                       (long long)s.free_blocks, "free_bytes", (long long)s.free_bytes, "live_blocks",
                       (long long)s.live_blocks, "live_bytes", (long long)s.live_bytes, "hits", (long long)s.hits,
                       "misses", (long long)s.misses);
}

// _empty_cpu_buffer_cache(): return the CPU buffer cache's free blocks to the system.
PyObject* empty_cpu_buffer_cache(PyObject*, PyObject*) {
  s2s_fused::cpu::BufferCache::get().empty();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "Facts about this build of the extension."},
    {"_set_switch", set_switch, METH_VARARGS, "Set a switch of build_info()['switches']; returns the previous value."},
    {"_set_check_gemm_tails", set_check_gemm_tails, METH_O, "Test switch: check CPU GEMM operands' row tails."},
    {"_set_cpu_path", set_cpu_path, METH_VARARGS, "Set S2S_FUSED_CPU_PATH's setting; returns the previous one."},
    {"_cpu_path_state", cpu_path_state, METH_NOARGS, "The CPU path setting, choices made and packed-weight cache."},
    {"_clear_cpu_path_state", clear_cpu_path_state, METH_NOARGS, "Forget the CPU path choices and packed weights."},
    {"_load_cpu_path_choices", load_cpu_path_choices, METH_O, "Take CPU path choices {key: path} made earlier."},
    {"_cpu_path", cpu_path_setting, METH_NOARGS, "(S2S_FUSED_CPU_PATH now, whether oneDNN may run)."},
    {"_record_cpu_path_choice", record_cpu_path_choice, METH_VARARGS, "Keep a CPU path choice measured in Python."},
    {"_cpu_buffer_cache_state", cpu_buffer_cache_state, METH_NOARGS, "The CPU buffer cache's blocks and hit counts."},
    {"_empty_cpu_buffer_cache", empty_cpu_buffer_cache, METH_NOARGS, "Return the CPU buffer cache's free blocks."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "s2s_fused compiled ops (see torch.ops.s2s_fused)", -1,
                      methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
