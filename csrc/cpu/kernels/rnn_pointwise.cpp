// Pointwise LSTM/GRU kernels (parameters: csrc/rnn_core.h), compiled once per CPU capability by setup.py. They are
// the CPU's one copy of the cell math: the cell ops, the per-step loop and the packed sequence loop all call them.
#include "cpu/kernels/vec_helpers.h"
#include "cpu/rnn_kernel_tables.h"

namespace s2s_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
inline const T* row(const CMat& m, int64_t b) {
  return m.data ? static_cast<const T*>(m.data) + b * m.ld : nullptr;
}
template <typename T>
inline T* row(const Mat& m, int64_t b) {
  return m.data ? static_cast<T*>(m.data) + b * m.ld : nullptr;
}
template <typename T>
inline T* off(T* p, int64_t k) {
  return p ? p + k : nullptr;
}

template <typename T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  if (dst && dst != src) std::copy(src, src + n, dst);
}
template <typename T>
inline void zero_row(T* dst, int64_t n) {
  if (dst) std::fill(dst, dst + n, T(0));
}

// f(j, n) over units [j0, j1), one vector of n <= W units at a time.
template <typename T, class F>
inline void for_units(int64_t j0, int64_t j1, F f) {
  constexpr int64_t W = VecOf<T>::size();
  for (int64_t j = j0; j < j1; j += W) f(j, std::min(W, j1 - j));
}

// The loop every kernel runs: rows [r0, r1), a finished row (active[b] == 0) to `finished`, the others to `live`.
template <class P, class Finished, class Live>
inline void for_rows(const P& p, int64_t r0, int64_t r1, Finished finished, Live live) {
  for (int64_t b = r0; b < r1; ++b) {
    if (p.active && !p.active[b]) {
      finished(b);
    } else {
      live(b);
    }
  }
}

// The hidden units [j0, j1) a forward call covers.
inline int64_t unit_end(const ForwardStep& p) { return p.j1 < 0 ? p.H : p.j1; }

// A finished row of a forward kernel: the state is kept (h1 = hx) and the output is zero, over units [j0, j1).
template <typename T>
inline void keep_state(const ForwardStep& p, int64_t b) {
  const int64_t j0 = p.j0, n = unit_end(p) - j0;
  copy_row(off(row<T>(p.h1, b), j0), row<T>(p.hx, b) + j0, n);
  zero_row(off(row<T>(p.out, b), j0), n);
}

// A forward kernel's new state h of row b, units [j, j + n): to h1 and to the output (when there is one).
template <typename T>
inline void store_state(const ForwardStep& p, int64_t b, int64_t j, const VecOf<T>& h, int64_t n) {
  vstore(row<T>(p.h1, b) + j, h, n);
  if (T* out = row<T>(p.out, b)) vstore(out + j, h, n);
}

// dh = dh1 + dh2 of a backward kernel's row over units [j, j + n), null operands reading as zero.
template <typename T>
inline VecOf<T> load_dh(const BackwardStep& p, int64_t b, int64_t j, int64_t n) {
  return vload_or_zero(off(row<T>(p.dh1, b), j), n) + vload_or_zero(off(row<T>(p.dh2, b), j), n);
}

// A finished row of a backward kernel: dhx = dh (and the kernel zeroes its gate gradients).
template <typename T>
inline void pass_dh(const BackwardStep& p, int64_t b) {
  T* dhx = row<T>(p.dhx, b);
  for_units<T>(0, p.H, [&](int64_t j, int64_t n) { vstore(dhx + j, load_dh<T>(p, b, j, n), n); });
}

// A forward kernel's optional biases, typed.
template <typename T>
struct Biases {
  const T* ih;
  const T* hh;
  explicit Biases(const ForwardStep& p)
      : ih(static_cast<const T*>(p.b_ih)), hh(static_cast<const T*>(p.b_hh)) {}
};

// a + b + c + d over n lanes, where b, c and d may be null (read as zero): a gate's two products and two biases.
template <typename T>
inline VecOf<T> pre_activation(const T* a, const T* b, const T* c, const T* d, int64_t n) {
  return vload(a, n) + vload_or_zero(b, n) + vload_or_zero(c, n) + vload_or_zero(d, n);
}

template <typename T>
void lstm_forward_impl(const LstmForwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  const int64_t H = p.H;
  const Biases<T> bias(p);
  const auto finished = [&](int64_t b) {
    keep_state<T>(p, b);
    copy_row(off(row<T>(p.c1, b), p.j0), row<T>(p.cx, b) + p.j0, unit_end(p) - p.j0);
  };
  for_rows(p, r0, r1, finished, [&](int64_t b) {
    const T* g1 = row<T>(p.g1, b);
    const T* g2 = row<T>(p.g2, b);
    const T* cx = row<T>(p.cx, b);
    T* ws = row<T>(p.ws, b);
    T* c1 = row<T>(p.c1, b);
    for_units<T>(p.j0, unit_end(p), [&](int64_t j, int64_t n) {
      V pre[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t col = k * H + j;
        pre[k] = pre_activation(g1 + col, off(g2, col), off(bias.ih, col), off(bias.hh, col), n);
      }
      const V i = vsigmoid(pre[0]);
      const V f = vsigmoid(pre[1]);
      const V g = vtanh(pre[2]);
      const V o = vsigmoid(pre[3]);
      const V c = f * vload(cx + j, n) + i * g;
      const V h = o * vtanh(c);
      if (ws) {
        vstore(ws + j, i, n);
        vstore(ws + H + j, f, n);
        vstore(ws + 2 * H + j, g, n);
        vstore(ws + 3 * H + j, o, n);
      }
      vstore(c1 + j, c, n);
      store_state<T>(p, b, j, h, n);
    });
  });
}

template <typename T>
void lstm_backward_impl(const LstmBackwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  const int64_t H = p.H;
  const V one(acc_t<T>(1));
  const auto finished = [&](int64_t b) {
    pass_dh<T>(p, b);
    T* dcx = row<T>(p.dcx, b);
    const T* dc1 = row<T>(p.dc1, b);
    for_units<T>(0, H, [&](int64_t j, int64_t n) { vstore(dcx + j, vload_or_zero(off(dc1, j), n), n); });
    zero_row(row<T>(p.dgates, b), 4 * H);
  };
  for_rows(p, r0, r1, finished, [&](int64_t b) {
    const T* ws = row<T>(p.ws, b);
    const T* cx = row<T>(p.cx, b);
    const T* c1 = row<T>(p.c1, b);
    const T* dc1 = row<T>(p.dc1, b);
    T* dgates = row<T>(p.dgates, b);
    T* dcx = row<T>(p.dcx, b);
    for_units<T>(0, H, [&](int64_t j, int64_t n) {
      const V i = vload(ws + j, n);
      const V f = vload(ws + H + j, n);
      const V g = vload(ws + 2 * H + j, n);
      const V o = vload(ws + 3 * H + j, n);
      const V dh = load_dh<T>(p, b, j, n);
      const V tc = vtanh(vload(c1 + j, n));
      const V dc = vload_or_zero(off(dc1, j), n) + dh * o * (one - tc * tc);
      vstore(dgates + j, dc * g * i * (one - i), n);
      vstore(dgates + H + j, dc * vload(cx + j, n) * f * (one - f), n);
      vstore(dgates + 2 * H + j, dc * i * (one - g * g), n);
      vstore(dgates + 3 * H + j, dh * tc * o * (one - o), n);
      vstore(dcx + j, dc * f, n);
    });
  });
}

// reset_after: the whole cell. reset_before: stage 1 (r, z and rh = r * hx; stage 2 handles finished rows).
template <typename T>
void gru_forward_impl(const GruForwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  const bool after = p.kind == CellKind::GRU_RESET_AFTER;
  const int64_t H = p.H;
  const Biases<T> bias(p);
  const auto finished = [&](int64_t b) {
    if (after) keep_state<T>(p, b);
  };
  for_rows(p, r0, r1, finished, [&](int64_t b) {
    const T* gi = row<T>(p.gi, b);
    const T* gh = row<T>(p.gh, b);
    const T* hx = row<T>(p.hx, b);
    T* ws = row<T>(p.ws, b);
    for_units<T>(p.j0, unit_end(p), [&](int64_t j, int64_t n) {
      const V r = vsigmoid(pre_activation(gi + j, gh + j, off(bias.ih, j), off(bias.hh, j), n));
      const V z = vsigmoid(pre_activation(gi + H + j, gh + H + j, off(bias.ih, H + j), off(bias.hh, H + j), n));
      const V h = vload(hx + j, n);
      if (!after) {
        vstore(ws + j, r, n);
        vstore(ws + H + j, z, n);
        vstore(row<T>(p.rh, b) + j, r * h, n);
        return;
      }
      const V hn = vload(gh + 2 * H + j, n) + vload_or_zero(off(bias.hh, 2 * H + j), n);
      const V nn = vtanh(vload(gi + 2 * H + j, n) + vload_or_zero(off(bias.ih, 2 * H + j), n) + r * hn);
      const V h_new = nn + z * (h - nn);
      if (ws) {
        vstore(ws + j, r, n);
        vstore(ws + H + j, z, n);
        vstore(ws + 2 * H + j, nn, n);
        vstore(ws + 3 * H + j, hn, n);
      }
      store_state<T>(p, b, j, h_new, n);
    });
  });
}

// reset_before stage 2: n = tanh(gi_n + b_in + ghn + b_hn), h1 = (1 - z) n + z hx.
template <typename T>
void gru_forward_stage2_impl(const GruForwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  const int64_t H = p.H;
  const Biases<T> bias(p);
  for_rows(p, r0, r1, [&](int64_t b) { keep_state<T>(p, b); }, [&](int64_t b) {
    const T* gi = row<T>(p.gi, b);
    const T* ghn = row<T>(p.ghn, b);
    const T* hx = row<T>(p.hx, b);
    T* ws = row<T>(p.ws, b);
    for_units<T>(p.j0, unit_end(p), [&](int64_t j, int64_t n) {
      const int64_t col = 2 * H + j;
      const V nn = vtanh(pre_activation(gi + col, ghn + j, off(bias.ih, col), off(bias.hh, col), n));
      const V z = vload(ws + H + j, n);
      const V h_new = nn + z * (vload(hx + j, n) - nn);
      vstore(ws + 2 * H + j, nn, n);
      store_state<T>(p, b, j, h_new, n);
    });
  });
}

// Row b of the operands both GRU backward stages read and write.
template <typename T>
struct GruBackwardRow {
  const T* ws;
  const T* hx;
  T* dgi;
  T* dhx;
  GruBackwardRow(const GruBackwardParams& p, int64_t b)
      : ws(row<T>(p.ws, b)), hx(row<T>(p.hx, b)), dgi(row<T>(p.dgi, b)), dhx(row<T>(p.dhx, b)) {}
};

// reset_after: the whole pointwise backward. reset_before: stage 1 (dz, dn).
template <typename T>
void gru_backward_impl(const GruBackwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  using A = acc_t<T>;
  const bool after = p.kind == CellKind::GRU_RESET_AFTER;
  const int64_t H = p.H;
  const V one(A(1));
  const auto finished = [&](int64_t b) {
    pass_dh<T>(p, b);
    T* dgi = row<T>(p.dgi, b);
    T* dgh = row<T>(p.dgh, b);
    zero_row(dgi, 3 * H);
    if (dgh != dgi) zero_row(dgh, 3 * H);
  };
  for_rows(p, r0, r1, finished, [&](int64_t b) {
    const auto [ws, hx, dgi, dhx] = GruBackwardRow<T>(p, b);
    T* dgh = row<T>(p.dgh, b);
    for_units<T>(0, H, [&](int64_t j, int64_t n) {
      const V dh = load_dh<T>(p, b, j, n);
      const V r = vload(ws + j, n);
      const V z = vload(ws + H + j, n);
      const V nn = vload(ws + 2 * H + j, n);
      const V dn = dh * (one - z) * (one - nn * nn);
      const V dz = dh * (vload(hx + j, n) - nn) * z * (one - z);
      vstore(dgi + H + j, dz, n);
      vstore(dgi + 2 * H + j, dn, n);
      if (!after) {
        // dr is known only after the caller's drh = dn W_hn GEMM (stage 2), but that GEMM's operand dn sits just
        // before the next row's dr columns, and oneDNN's AMX bf16 matmul reads up to 31 columns past K of each
        // row and cancels them against zero padding: NaN left there by the allocator makes NaN * 0 = NaN in drh
        // (uxlfoundation/oneDNN#5717). So the columns hold zeros until stage 2 writes them.
        vstore(dgi + j, V(A(0)), n);
        return;
      }
      const V dr = dn * vload(ws + 3 * H + j, n) * r * (one - r);
      vstore(dgi + j, dr, n);
      vstore(dgh + j, dr, n);
      vstore(dgh + H + j, dz, n);
      vstore(dgh + 2 * H + j, dn * r, n);
      vstore(dhx + j, dh * z, n);
    });
  });
}

// reset_before stage 2: dr = drh * hx * r (1 - r); dhx = dh * z + drh * r; rh = r * hx.
template <typename T>
void gru_backward_stage2_impl(const GruBackwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  const int64_t H = p.H;
  const V one(acc_t<T>(1));
  // A finished row: stage 1 already passed dh through and zeroed the gate gradients; rh only feeds dW_hn, scaled
  // by dn = 0.
  for_rows(p, r0, r1, [&](int64_t b) { zero_row(row<T>(p.rh, b), H); }, [&](int64_t b) {
    const auto [ws, hx, dgi, dhx] = GruBackwardRow<T>(p, b);
    const T* drh = row<T>(p.drh, b);
    T* rh = row<T>(p.rh, b);
    for_units<T>(0, H, [&](int64_t j, int64_t n) {
      const V r = vload(ws + j, n);
      const V h = vload(hx + j, n);
      const V d_rh = vload(drh + j, n);
      vstore(dgi + j, d_rh * h * r * (one - r), n);
      vstore(dhx + j, load_dh<T>(p, b, j, n) * vload(ws + H + j, n) + d_rh * r, n);
      if (rh) vstore(rh + j, r * h, n);
    });
  });
}

template <template <typename> class F, typename P>
void by_dtype(const P& p, int64_t r0, int64_t r1) {
  switch (p.dtype) {
    case Dtype::Float32: return F<float>::run(p, r0, r1);
    case Dtype::Float64: return F<double>::run(p, r0, r1);
    case Dtype::Float16: return F<c10::Half>::run(p, r0, r1);
    case Dtype::BFloat16: return F<c10::BFloat16>::run(p, r0, r1);
  }
}

#define S2S_KERNEL_FUNCTOR(name, Params)                                                     \
  template <typename T>                                                                      \
  struct name##_fn {                                                                         \
    static void run(const Params& p, int64_t r0, int64_t r1) { name##_impl<T>(p, r0, r1); }  \
  };                                                                                         \
  void name(const Params& p, int64_t r0, int64_t r1) { by_dtype<name##_fn>(p, r0, r1); }

S2S_KERNEL_FUNCTOR(lstm_forward, LstmForwardParams)
S2S_KERNEL_FUNCTOR(lstm_backward, LstmBackwardParams)
S2S_KERNEL_FUNCTOR(gru_forward, GruForwardParams)
S2S_KERNEL_FUNCTOR(gru_forward_stage2, GruForwardParams)
S2S_KERNEL_FUNCTOR(gru_backward, GruBackwardParams)
S2S_KERNEL_FUNCTOR(gru_backward_stage2, GruBackwardParams)

}  // namespace

extern const RnnPointwiseKernels rnn_pointwise_kernels;
const RnnPointwiseKernels rnn_pointwise_kernels = {
    lstm_forward, lstm_backward, gru_forward, gru_forward_stage2, gru_backward, gru_backward_stage2,
};

}  // namespace CPU_CAPABILITY
}  // namespace s2s_fused::cpu
