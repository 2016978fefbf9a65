// Pointwise LSTM/GRU kernels (see rnn_pointwise.h), compiled once per CPU capability by setup.py.
#include "rnn_pointwise.h"

#include "cpu/kernels/vec_helpers.h"

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
inline const T* off(const T* p, int64_t k) {
  return p ? p + k : nullptr;
}
template <typename T>
inline T* off_or_null(T* p, int64_t k) {
  return p ? p + k : nullptr;
}

// Copy n elements of one row (finished sequences keep their state).
template <typename T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  if (dst && dst != src) std::copy(src, src + n, dst);
}
template <typename T>
inline void zero_row(T* dst, int64_t n) {
  if (dst) std::fill(dst, dst + n, T(0));
}

// The hidden units [j0, j1) a forward call covers.
template <class P>
inline int64_t unit_end(const P& p) {
  return p.j1 < 0 ? p.H : p.j1;
}

template <typename T>
void lstm_forward_impl(const LstmForwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  constexpr int64_t W = V::size();
  const int64_t H = p.H, j0 = p.j0, j1 = unit_end(p);
  const T* b1 = static_cast<const T*>(p.b1);
  const T* b2 = static_cast<const T*>(p.b2);
  for (int64_t b = r0; b < r1; ++b) {
    const T* cx = row<T>(p.cx, b);
    T* h1 = row<T>(p.h1, b);
    T* c1 = row<T>(p.c1, b);
    T* out = row<T>(p.out, b);
    if (p.active && !p.active[b]) {
      copy_row(off_or_null(h1, j0), row<T>(p.hx, b) + j0, j1 - j0);
      copy_row(off_or_null(c1, j0), cx + j0, j1 - j0);
      zero_row(off_or_null(out, j0), j1 - j0);
      continue;
    }
    const T* g1 = row<T>(p.g1, b);
    const T* g2 = row<T>(p.g2, b);
    T* ws = row<T>(p.ws, b);
    for (int64_t j = j0; j < j1; j += W) {
      const int64_t n = std::min(W, j1 - j);
      V pre[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t col = k * H + j;
        pre[k] = vload(g1 + col, n) + vload_or_zero(off(g2, col), n) + vload_or_zero(off(b1, col), n) +
                 vload_or_zero(off(b2, col), n);
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
      vstore(h1 + j, h, n);
      if (out) vstore(out + j, h, n);
    }
  }
}

template <typename T>
void lstm_backward_impl(const LstmBackwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::size();
  const int64_t H = p.H;
  const V one(A(1));
  for (int64_t b = r0; b < r1; ++b) {
    const T* dh1 = row<T>(p.dh1, b);
    const T* dh2 = row<T>(p.dh2, b);
    const T* dc1 = row<T>(p.dc1, b);
    T* dgates = row<T>(p.dgates, b);
    T* dcx = row<T>(p.dcx, b);
    if (p.active && !p.active[b]) {
      T* dhx = row<T>(p.dhx, b);
      for (int64_t j = 0; j < H; j += W) {
        const int64_t n = std::min(W, H - j);
        vstore(dhx + j, vload_or_zero(off(dh1, j), n) + vload_or_zero(off(dh2, j), n), n);
        vstore(dcx + j, vload_or_zero(off(dc1, j), n), n);
      }
      zero_row(dgates, 4 * H);
      continue;
    }
    const T* ws = row<T>(p.ws, b);
    const T* cx = row<T>(p.cx, b);
    const T* c1 = row<T>(p.c1, b);
    for (int64_t j = 0; j < H; j += W) {
      const int64_t n = std::min(W, H - j);
      const V i = vload(ws + j, n);
      const V f = vload(ws + H + j, n);
      const V g = vload(ws + 2 * H + j, n);
      const V o = vload(ws + 3 * H + j, n);
      const V dh = vload_or_zero(off(dh1, j), n) + vload_or_zero(off(dh2, j), n);
      const V tc = vtanh(vload(c1 + j, n));
      const V dc = vload_or_zero(off(dc1, j), n) + dh * o * (one - tc * tc);
      const V di = dc * g * i * (one - i);
      const V df = dc * vload(cx + j, n) * f * (one - f);
      const V dg = dc * i * (one - g * g);
      const V d_o = dh * tc * o * (one - o);
      vstore(dgates + j, di, n);
      vstore(dgates + H + j, df, n);
      vstore(dgates + 2 * H + j, dg, n);
      vstore(dgates + 3 * H + j, d_o, n);
      vstore(dcx + j, dc * f, n);
    }
  }
}

// reset_after: the whole cell. reset_before: stage 1 (r, z and rh = r * hx).
template <typename T>
void gru_forward_impl(const GruForwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::size();
  const int64_t H = p.H, j0 = p.j0, j1 = unit_end(p);
  const T* bi = static_cast<const T*>(p.b_ih);
  const T* bh = static_cast<const T*>(p.b_hh);
  const V one(A(1));
  for (int64_t b = r0; b < r1; ++b) {
    const T* hx = row<T>(p.hx, b);
    if (p.active && !p.active[b]) {
      if (p.reset_after) {
        copy_row(row<T>(p.h1, b) + j0, hx + j0, j1 - j0);
        zero_row(off_or_null(row<T>(p.out, b), j0), j1 - j0);
      }
      continue;  // reset_before: stage 2 handles the row
    }
    const T* gi = row<T>(p.gi, b);
    const T* gh = row<T>(p.gh, b);
    T* ws = row<T>(p.ws, b);
    for (int64_t j = j0; j < j1; j += W) {
      const int64_t n = std::min(W, j1 - j);
      const V r = vsigmoid(vload(gi + j, n) + vload(gh + j, n) + vload_or_zero(off(bi, j), n) +
                           vload_or_zero(off(bh, j), n));
      const V z = vsigmoid(vload(gi + H + j, n) + vload(gh + H + j, n) + vload_or_zero(off(bi, H + j), n) +
                           vload_or_zero(off(bh, H + j), n));
      const V h = vload(hx + j, n);
      if (p.reset_after) {
        const V hn = vload(gh + 2 * H + j, n) + vload_or_zero(off(bh, 2 * H + j), n);
        const V nn = vtanh(vload(gi + 2 * H + j, n) + vload_or_zero(off(bi, 2 * H + j), n) + r * hn);
        const V h_new = nn + z * (h - nn);
        if (ws) {
          vstore(ws + j, r, n);
          vstore(ws + H + j, z, n);
          vstore(ws + 2 * H + j, nn, n);
          vstore(ws + 3 * H + j, hn, n);
        }
        vstore(row<T>(p.h1, b) + j, h_new, n);
        if (T* out = row<T>(p.out, b)) vstore(out + j, h_new, n);
      } else {
        vstore(ws + j, r, n);
        vstore(ws + H + j, z, n);
        vstore(row<T>(p.rh, b) + j, r * h, n);
      }
    }
  }
}

// reset_before stage 2: n = tanh(gi_n + b_in + ghn + b_hn), h1 = (1 - z) n + z hx.
template <typename T>
void gru_forward_stage2_impl(const GruForwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  constexpr int64_t W = V::size();
  const int64_t H = p.H, j0 = p.j0, j1 = unit_end(p);
  const T* bi = static_cast<const T*>(p.b_ih);
  const T* bh = static_cast<const T*>(p.b_hh);
  for (int64_t b = r0; b < r1; ++b) {
    const T* hx = row<T>(p.hx, b);
    T* h1 = row<T>(p.h1, b);
    T* out = row<T>(p.out, b);
    if (p.active && !p.active[b]) {
      copy_row(h1 + j0, hx + j0, j1 - j0);
      zero_row(off_or_null(out, j0), j1 - j0);
      continue;
    }
    const T* gi = row<T>(p.gi, b);
    const T* ghn = row<T>(p.ghn, b);
    T* ws = row<T>(p.ws, b);
    for (int64_t j = j0; j < j1; j += W) {
      const int64_t n = std::min(W, j1 - j);
      const V nn = vtanh(vload(gi + 2 * H + j, n) + vload(ghn + j, n) + vload_or_zero(off(bi, 2 * H + j), n) +
                         vload_or_zero(off(bh, 2 * H + j), n));
      const V z = vload(ws + H + j, n);
      const V h = vload(hx + j, n);
      const V h_new = nn + z * (h - nn);
      vstore(ws + 2 * H + j, nn, n);
      vstore(h1 + j, h_new, n);
      if (out) vstore(out + j, h_new, n);
    }
  }
}

// reset_after: the whole pointwise backward. reset_before: stage 1 (dz, dn).
template <typename T>
void gru_backward_impl(const GruBackwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::size();
  const int64_t H = p.H;
  const V one(A(1));
  for (int64_t b = r0; b < r1; ++b) {
    const T* dh1 = row<T>(p.dh1, b);
    const T* dh2 = row<T>(p.dh2, b);
    T* dgi = row<T>(p.dgi, b);
    T* dgh = row<T>(p.dgh, b);
    T* dhx = row<T>(p.dhx, b);
    if (p.active && !p.active[b]) {
      for (int64_t j = 0; j < H; j += W) {
        const int64_t n = std::min(W, H - j);
        vstore(dhx + j, vload_or_zero(off(dh1, j), n) + vload_or_zero(off(dh2, j), n), n);
      }
      zero_row(dgi, 3 * H);
      if (dgh != dgi) zero_row(dgh, 3 * H);
      continue;
    }
    const T* ws = row<T>(p.ws, b);
    const T* hx = row<T>(p.hx, b);
    for (int64_t j = 0; j < H; j += W) {
      const int64_t n = std::min(W, H - j);
      const V dh = vload_or_zero(off(dh1, j), n) + vload_or_zero(off(dh2, j), n);
      const V r = vload(ws + j, n);
      const V z = vload(ws + H + j, n);
      const V nn = vload(ws + 2 * H + j, n);
      const V h = vload(hx + j, n);
      const V dn = dh * (one - z) * (one - nn * nn);
      const V dz = dh * (h - nn) * z * (one - z);
      vstore(dgi + H + j, dz, n);
      vstore(dgi + 2 * H + j, dn, n);
      if (p.reset_after) {
        const V hn = vload(ws + 3 * H + j, n);
        const V dr = dn * hn * r * (one - r);
        vstore(dgi + j, dr, n);
        vstore(dgh + j, dr, n);
        vstore(dgh + H + j, dz, n);
        vstore(dgh + 2 * H + j, dn * r, n);
        vstore(dhx + j, dh * z, n);
      } else {
        // dr is known only after the caller's drh = dn W_hn GEMM (stage 2), but that GEMM's operand dn sits just
        // before the next row's dr columns, and oneDNN's AMX bf16 matmul reads up to 31 columns past K of each
        // row and cancels them against zero padding: NaN left there by the allocator makes NaN * 0 = NaN in drh
        // (uxlfoundation/oneDNN#5717). So the columns hold zeros until stage 2 writes them.
        vstore(dgi + j, V(A(0)), n);
      }
    }
  }
}

// reset_before stage 2: dr = drh * hx * r (1 - r); dhx = dh * z + drh * r; rh = r * hx.
template <typename T>
void gru_backward_stage2_impl(const GruBackwardParams& p, int64_t r0, int64_t r1) {
  using V = VecOf<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::size();
  const int64_t H = p.H;
  const V one(A(1));
  for (int64_t b = r0; b < r1; ++b) {
    const T* hx = row<T>(p.hx, b);
    T* rh = row<T>(p.rh, b);
    const T* ws = row<T>(p.ws, b);
    if (p.active && !p.active[b]) {
      // stage 1 already passed dh through and zeroed the gate gradients; rh only feeds dW_hn, scaled by dn = 0.
      zero_row(rh, H);
      continue;
    }
    const T* dh1 = row<T>(p.dh1, b);
    const T* dh2 = row<T>(p.dh2, b);
    const T* drh = row<T>(p.drh, b);
    T* dgi = row<T>(p.dgi, b);
    T* dhx = row<T>(p.dhx, b);
    for (int64_t j = 0; j < H; j += W) {
      const int64_t n = std::min(W, H - j);
      const V dh = vload_or_zero(off(dh1, j), n) + vload_or_zero(off(dh2, j), n);
      const V r = vload(ws + j, n);
      const V z = vload(ws + H + j, n);
      const V h = vload(hx + j, n);
      const V d_rh = vload(drh + j, n);
      vstore(dgi + j, d_rh * h * r * (one - r), n);
      vstore(dhx + j, dh * z + d_rh * r, n);
      if (rh) vstore(rh + j, r * h, n);
    }
  }
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
