// The CPU device of the RNN ops (the interface of csrc/rnn_device.h): the capability-selected pointwise kernels of
// csrc/cpu/kernels/rnn_pointwise.cpp in parallel over batch rows, and the GEMMs of its path (csrc/cpu/cpu_path.h):
// for fp32 our packed micro-kernel (the whole sequence loop, csrc/cpu/rnn_packed_sequence.h; the cells' weight
// products over cached packed weights), oneDNN's matmul or ATen's BLAS.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <span>

#include "config.h"
#include "cpu/cpu_path.h"
#include "cpu/memory.h"
#include "cpu/rnn_kernel_tables.h"
#include "cpu/rnn_packed_sequence.h"
#include "rnn_core.h"

// oneDNN's matmul, as ATen uses it (exported by libtorch_cpu; its header is not shipped). Weak, so a torch built
// without it still loads this extension (and uses ATen's BLAS).
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result,
                                         float beta, float alpha);
}

namespace s2s_fused::cpu {

// Rows per task: enough elements that a task outweighs its scheduling cost (~32K gate values).
inline int64_t row_grain(int64_t H, int64_t gates) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, gates * H));
}

// fp32 GEMMs through oneDNN where it is available: on this project's AMD (Zen, AVX-512) machines MKL's sgemm
// takes its generic path, and oneDNN's kernels (the ones torch.nn.LSTM's CPU path uses) were 7-25% faster on
// the layer's shapes (benchmarks/NOTES.md, rnn_layer). Other dtypes, and builds without oneDNN: ATen (BLAS).
// Small products stay on ATen's BLAS: oneDNN builds a primitive per call, which costs more than a small GEMM
// (a T=1, B=1, H=4 GRU layer's backward took 68 us with its three weight-gradient GEMMs on oneDNN).
inline bool onednn_gemm_available() {
  static const bool available = [] {
    if (!at::hasMKLDNN() || &at::native::mkldnn_matmul == nullptr) return false;
    // ATen's mkldnn_matmul refuses fp32 too on x86 CPUs without AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT ("bf16 path
    // needs the cpu support ..."), an AMD EPYC Zen 3 among them: ask it once, as its own check is not exported.
    try {
      const at::Tensor a = at::ones({2, 2}, at::kFloat);
      at::Tensor out = at::empty({2, 2}, at::kFloat);
      at::native::mkldnn_matmul(a, a, out, 0.f, 1.f);
      return out.eq(2.f).all().item<bool>();
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return available && !config::on(config::Switch::NoOnednn);
}
inline bool use_onednn_gemm(const at::Tensor& out, int64_t inner) {
  constexpr int64_t kMinMacs = int64_t(1) << 18;  // 64^3
  return onednn_gemm_available() && out.scalar_type() == at::kFloat && out.numel() > 0 &&
         out.numel() * inner >= kMinMacs;
}

// The paths that differ for a call in `dtype` (csrc/cpu/cpu_path.h): ours and oneDNN's only for fp32; units: the
// packed path's unit split too (a layer forward where it differs: units_split_differs).
inline std::vector<CpuPath> path_candidates(at::ScalarType dtype, bool units = false) {
  std::vector<CpuPath> c;
  if (dtype == at::kFloat) {
    if (use_packed_sequence(Dtype::Float32)) {
      c.push_back(CpuPath::Packed);
      if (units) c.push_back(CpuPath::PackedUnits);
    }
    if (onednn_gemm_available()) c.push_back(CpuPath::Onednn);
  }
  c.push_back(CpuPath::Blas);
  return c;
}

// out (M x N) (+)= a (M x K) @ b (K x N) with b packed (layout L): the threads split the panels (each streams its
// share of b once, every row tile reusing a panel from L2), or, with too few panels to go round, the rows.
inline void packed_product(const PackedLayout& L, const at::Tensor& packed, const at::Tensor& a, at::Tensor& out,
                           bool accumulate) {
  const auto& gk = packed_gemm_kernels();
  const float* pa = a.const_data_ptr<float>();
  float* pc = out.mutable_data_ptr<float>();
  const int64_t M = a.size(0), lda = a.stride(0), ldc = out.stride(0);
  const int64_t nt = at::get_num_threads();
  if (L.panels >= 2 * nt || M < 8 * nt) {
    at::parallel_for(0, L.panels, 1, [&](int64_t p0, int64_t p1) {
      const PanelRange r = panel_range(L, packed, p0, p1);
      gk.gemm(r.layout, r.data, pa, lda, M, pc + p0 * L.ps, ldc, accumulate);
    });
    return;
  }
  at::parallel_for(0, M, 4, [&](int64_t r0, int64_t r1) {
    gk.gemm(L, packed.const_data_ptr<float>(), pa + r0 * lda, lda, r1 - r0, pc + r0 * ldc, ldc, accumulate);
  });
}

// With S2S_FUSED_CHECK_GEMM_TAILS on (the test session turns it on): before each GEMM, fail if the columns that
// oneDNN's AMX bf16 matmul reads past K in every row but the last (up to the next multiple of 32, within the row
// stride) hold NaN or inf. That kernel cancels them against zero padding of the other operand, so a non-finite
// value there leaks into the product (uxlfoundation/oneDNN#5717); on machines without AMX they are never read, and
// this check makes a buffer left unwritten next to a GEMM operand fail everywhere, not only on Intel AMX machines.
inline void check_gemm_operand_tail(const at::Tensor& a, const char* name) {
  if (!config::on(config::Switch::CheckGemmTails) || a.dim() != 2 || a.stride(1) != 1 || a.size(0) < 2) return;
  const int64_t K = a.size(1), ld = a.stride(0);
  const int64_t tail = std::min<int64_t>((K + 31) / 32 * 32, ld) - K;
  if (K <= 32 || tail <= 0) return;
  const at::Tensor past = a.as_strided({a.size(0) - 1, tail}, {ld, 1}, a.storage_offset() + K);
  TORCH_CHECK(at::isfinite(past).all().item<bool>(), "s2s_fused: GEMM operand ", name, " (", a.sizes(),
              ", row stride ", ld, "): the ", tail, " elements after some row hold NaN/inf (unwritten memory?)");
}

struct CpuRnnPolicy {
  struct Guard {  // nothing to select on the CPU
    explicit Guard(const at::Device&) {}
  };

  // Auto (a policy made without a path) behaves as Packed: every fast path this build has.
  CpuPath path = CpuPath::Auto;

  bool packed() const { return path == CpuPath::Auto || path == CpuPath::Packed || path == CpuPath::PackedUnits; }
  bool units() const { return path == CpuPath::PackedUnits; }
  bool onednn() const { return path != CpuPath::Blas; }

  // The op f(policy) run with the path of S2S_FUSED_CPU_PATH or the one measured fastest for `key` (cpu_path.h).
  template <class F>
  static auto run(const std::string& key, at::ScalarType dtype, F&& f, bool units = false) {
    const std::string full = key + " " + std::string(c10::toString(dtype)) + " threads=" +
                             std::to_string(at::get_num_threads());
    return run_with_path(full, path_candidates(dtype, units), [&](CpuPath p) { return f(CpuRnnPolicy{p}); });
  }
  // ... for a layer op (csrc/rnn_layer_impl.h): keyed by the layer's kind, directions and shape buckets. The
  // inference ops share their training forward's key, so that a layer gives the same numbers with and without
  // autograd (each path rounds differently).
  template <class Layer, class F>
  static auto run_layer(const char* op, const Layer& L, F&& f) {
    const auto& a = L.a();
    std::string name = op;
    if (name.ends_with("_inference")) name = name.substr(0, name.size() - 10) + "_forward";
    const std::string key = name + " D=" + std::to_string(L.D) + " T~" + std::to_string(bucket(a.T)) +
                            " B~" + std::to_string(bucket(a.B)) + " I=" + std::to_string(a.I) + " H=" +
                            std::to_string(a.H) + (a.active.defined() ? " lengths" : "");
    // The unit split is a candidate of the forwards on the whole-sequence packed path (no projection).
    const bool units = name.ends_with("_forward") && a.P == a.H && units_split_differs(a.B, a.H);
    return run(key, a.input.scalar_type(), std::forward<F>(f), units);
  }

  // Sequence-sized buffers (workspaces, states, gradients): huge-page backed where they are large.
  at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) const {
    return empty_buffer(sizes, options);
  }

  // out = a @ b (+ out when accumulate); 3-D operands: one batched product over the leading (direction) dim.
  void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (a.size(-1) == 0) {  // empty inner dimension: oneDNN and BLAS disagree on what to do; the answer is 0
      if (!accumulate) out.zero_();
      return;
    }
    if (a.dim() == 3) {
      for (int64_t d = 0; d < a.size(0); ++d) check_gemm_operand_tail(a.select(0, d), "a");
      if (accumulate) out.baddbmm_(a, b); else at::bmm_out(out, a, b);
      return;
    }
    check_gemm_operand_tail(a, "a");
    if (onednn() && use_onednn_gemm(out, a.size(1))) {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.f : 0.f, 1.f);
    } else if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }

  // out (+)= a @ w, w (K x N) a weight or a view of one, the same across calls: on the packed path (fp32) through
  // our micro-kernel over w packed once per weight version (cpu_path.h, PackedWeights), else gemm.
  void weight_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& w, bool accumulate) const {
    const bool fits = a.dim() == 2 && w.dim() == 2 && a.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                      out.scalar_type() == at::kFloat && a.size(1) > 0 && out.numel() > 0 && a.stride(1) == 1 &&
                      out.stride(1) == 1;
    if (!packed() || !fits || !use_packed_sequence(Dtype::Float32)) {
      gemm(out, a, w, accumulate);
      return;
    }
    const PackedLayout L = PackedLayout::plain(w.size(0), w.size(1), packed_gemm_kernels().width);
    const at::Tensor packed = packed_weights().get(
        w, L, [&](const at::Tensor& b) { return pack_operand(L, b.const_data_ptr(), b.stride(0), b.stride(1)); });
    packed_product(L, packed, a, out, accumulate);
  }

  // Each direction's kernel in parallel over the batch rows.
  template <class P, class Kernel>
  static void rows(std::span<const P> p, int64_t B, int64_t gates, Kernel kernel) {
    for (const P& q : p) {
      at::parallel_for(0, B, row_grain(q.H, gates), [&](int64_t r0, int64_t r1) { kernel(q, r0, r1); });
    }
  }
  void lstm_forward(std::span<const LstmForwardParams> p, int64_t B) const {
    rows(p, B, 4, rnn_pointwise_kernels().lstm_forward);
  }
  void lstm_backward(std::span<const LstmBackwardParams> p, int64_t B) const {
    rows(p, B, 4, rnn_pointwise_kernels().lstm_backward);
  }
  void gru_forward(std::span<const GruForwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_forward);
  }
  void gru_forward_stage2(std::span<const GruForwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_forward_stage2);
  }
  void gru_backward(std::span<const GruBackwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_backward);
  }
  void gru_backward_stage2(std::span<const GruBackwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_backward_stage2);
  }

  // fp32: the whole time loop with packed weights, each thread over its own rows, computing each step's input
  // projection next to its recurrent product; other dtypes: the per-step loop.
  bool projects_input(Dtype dtype) const { return packed() && use_packed_sequence(dtype); }
  bool run_sequence(const Sequence& q) const { return packed() && packed_sequence_forward(q, pack_operand, units()); }
  bool run_sequence_backward(const Sequence& q, const SequenceGrads& g) const {
    return packed() && packed_sequence_backward(q, g, pack_operand);
  }
  // ... given the layer's weight tensors (Layer: csrc/rnn_recurrence.h), whose packed copies are then kept across
  // calls (PackedWeights): an inference or evaluation loop packs each weight once, not once per call (about 3 % of
  // an LSTM layer's forward at T=32, B=64, I=H=256).
  template <class Layer>
  bool run_sequence(const Sequence& q, const Layer& L) const {
    return packed() && packed_sequence_forward(q, kept_packing(L), units());
  }
  template <class Layer>
  bool run_sequence_backward(const Sequence& q, const SequenceGrads& g, const Layer& L) const {
    return packed() && packed_sequence_backward(q, g, kept_packing(L));
  }

 private:
  // pack(layout, src, sk, sn) for packed_sequence_*: src lies in direction d's W_ih or W_hh (found by address),
  // and the packing of that view is looked up in PackedWeights; a weight that is not a contiguous fp32 tensor
  // (src then points into a temporary contiguous copy) is packed as is.
  template <class Layer>
  static auto kept_packing(const Layer& L) {
    return [&L](const PackedLayout& layout, const void* src, int64_t sk, int64_t sn) {
      for (int64_t d = 0; d < L.D; ++d) {
        for (const at::Tensor* w : {&L.dir[d].w_ih, &L.dir[d].w_hh}) {
          if (!w->defined() || !w->is_contiguous() || w->scalar_type() != at::kFloat) continue;
          const float* base = w->const_data_ptr<float>();
          const int64_t off = static_cast<const float*>(src) - base;
          if (off < 0 || off >= w->numel()) continue;
          // The (K x N) view the packing reads: N columns, N = the gate columns (gated) or the segment (plain).
          const int64_t N = layout.vs > 0 ? layout.nv * layout.vs : layout.len;
          const at::Tensor b = w->as_strided({layout.K, N}, {sk, sn}, w->storage_offset() + off);
          return packed_weights().get(b, layout, [&](const at::Tensor&) { return pack_operand(layout, src, sk, sn); });
        }
      }
      return pack_operand(layout, src, sk, sn);
    };
  }
};

}  // namespace s2s_fused::cpu
