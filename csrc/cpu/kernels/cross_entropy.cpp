// Masked softmax cross-entropy, forward and backward, over rows [r0, r1) (see csrc/cross_entropy.h). Compiled
// once per CPU capability by setup.py.
//
// Memory traffic per unmasked row of V logits: forward reads it once (blocks of kBlock elements: block max, then
// the block's exp-sum from L1, merged into the running (max, sum) pair, so one exp per element), backward reads it
// once and writes the gradient once. Masked rows: no logits read; forward writes two scalars, backward a zero row.
#include <cmath>
#include <limits>

#include "cross_entropy.h"
#include "cpu/kernels/vec_helpers.h"

namespace s2s_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

// Elements per block of the forward: 8 KB of fp32, so the second sweep over a block hits L1.
constexpr int64_t kBlock = 2048;

// Load n (<= size) elements; missing lanes read as `fill`.
template <typename T>
inline VecOf<T> vload_fill(const T* p, int64_t n, acc_t<T> fill) {
  using V = VecOf<T>;
  const V v = vload(p, n);
  return n == V::size() ? v : V::set(V(fill), v, n);
}

template <typename A, typename V>
inline A hmax(const V& v) {
  alignas(64) A buf[V::size()];
  v.store(buf);
  A m = buf[0];
  for (int64_t k = 1; k < V::size(); ++k) m = std::max(m, buf[k]);
  return m;
}

inline bool row_masked(const CeRows& p, int64_t n, int64_t b, int64_t t) {
  if (p.valid_len && t >= p.valid_len[b]) return true;
  return p.target[n] == p.ignore_index;
}

template <typename T>
inline const T* row_ptr(const CeRows& p, int64_t b, int64_t t) {
  return static_cast<const T*>(p.logits) + b * p.stride_b + t * p.stride_t;
}

template <typename T>
int64_t forward_impl(const CeForwardParams& prm, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using V = VecOf<T>;
  constexpr int64_t W = V::size();
  const CeRows& p = prm.rows;
  const int64_t Vn = p.V;
  const A eps = static_cast<A>(p.label_smoothing);
  const bool smooth = p.label_smoothing != 0.0;
  const A ninf = -std::numeric_limits<A>::infinity();
  A* loss = static_cast<A*>(prm.loss);
  A* lse_out = static_cast<A*>(prm.lse);
  int64_t bad = -1;
  for (int64_t n = r0; n < r1; ++n) {
    const int64_t b = n / p.T, t = n % p.T;
    if (row_masked(p, n, b, t)) {
      loss[n] = 0;
      lse_out[n] = 0;
      continue;
    }
    const int64_t y = p.target[n];
    if (y < 0 || y >= Vn) {
      loss[n] = lse_out[n] = std::numeric_limits<A>::quiet_NaN();
      if (bad < 0) bad = n;
      continue;
    }
    const T* x = row_ptr<T>(p, b, t);
    A m = ninf, s = 0;
    V vsumx(A(0));
    for (int64_t j0 = 0; j0 < Vn; j0 += kBlock) {
      const int64_t j1 = std::min(Vn, j0 + kBlock);
      V vm(ninf);
      for (int64_t j = j0; j < j1; j += W) {
        const int64_t k = std::min(W, j1 - j);
        const V v = vload_fill(x + j, k, ninf);
        vm = at::vec::maximum(vm, v);
        if (smooth) vsumx = vsumx + V::set(V(A(0)), v, k);
      }
      const A bm = hmax<A>(vm);
      const A m_new = std::max(m, bm);
      if (m_new == ninf) continue;  // every logit so far is -inf
      const V vmn(m_new);
      V vs(A(0));
      for (int64_t j = j0; j < j1; j += W) {
        const int64_t k = std::min(W, j1 - j);
        const V e = vexp(vload_fill(x + j, k, ninf) - vmn);
        vs = vs + (k == W ? e : V::set(V(A(0)), e, k));
      }
      s = s * std::exp(m - m_new) + hsum<A>(vs);
      m = m_new;
    }
    const A lse = m + std::log(s);
    const A xy = static_cast<A>(x[y]);
    A l = lse - xy;
    if (smooth) l = (A(1) - eps) * l + eps * (lse - hsum<A>(vsumx) / static_cast<A>(Vn));
    loss[n] = l;
    lse_out[n] = lse;
  }
  return bad;
}

template <typename T>
int64_t backward_impl(const CeBackwardParams& prm, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using V = VecOf<T>;
  constexpr int64_t W = V::size();
  const CeRows& p = prm.rows;
  const int64_t Vn = p.V;
  const A eps = static_cast<A>(p.label_smoothing);
  const A* lse_in = static_cast<const A*>(prm.lse);
  const A* gl = static_cast<const A*>(prm.grad_loss);
  int64_t bad = -1;
  for (int64_t n = r0; n < r1; ++n) {
    const int64_t b = n / p.T, t = n % p.T;
    T* dx = static_cast<T*>(prm.grad_logits) + n * Vn;
    if (row_masked(p, n, b, t)) {
      std::fill(dx, dx + Vn, T(0));
      continue;
    }
    const int64_t y = p.target[n];
    if (y < 0 || y >= Vn) {
      std::fill(dx, dx + Vn, static_cast<T>(std::numeric_limits<A>::quiet_NaN()));
      if (bad < 0) bad = n;
      continue;
    }
    const T* x = row_ptr<T>(p, b, t);
    const A g = gl[b * prm.grad_stride_b + t * prm.grad_stride_t];
    const A lse = lse_in[n];
    // dx_j = g * exp(x_j - lse) - g * eps / V, and the true class adds -g * (1 - eps), computed in acc precision
    // and rounded once (overwrites the element the vector loop stored).
    const V vg(g), vlse(lse), voff(g * eps / static_cast<A>(Vn));
    for (int64_t j = 0; j < Vn; j += W) {
      const int64_t k = std::min(W, Vn - j);
      const V e = vexp(vload(x + j, k) - vlse);
      vstore(dx + j, vg * e - voff, k);
    }
    const A py = std::exp(static_cast<A>(x[y]) - lse);
    dx[y] = static_cast<T>(g * (py - eps / static_cast<A>(Vn) - (A(1) - eps)));
  }
  return bad;
}

template <template <typename> class F, typename P>
int64_t by_dtype(const P& p, int64_t r0, int64_t r1) {
  switch (p.rows.dtype) {
    case Dtype::Float32: return F<float>::run(p, r0, r1);
    case Dtype::Float64: return F<double>::run(p, r0, r1);
    case Dtype::Float16: return F<c10::Half>::run(p, r0, r1);
    case Dtype::BFloat16: return F<c10::BFloat16>::run(p, r0, r1);
  }
  return -1;
}

template <typename T>
struct forward_fn {
  static int64_t run(const CeForwardParams& p, int64_t r0, int64_t r1) { return forward_impl<T>(p, r0, r1); }
};
template <typename T>
struct backward_fn {
  static int64_t run(const CeBackwardParams& p, int64_t r0, int64_t r1) { return backward_impl<T>(p, r0, r1); }
};

int64_t ce_forward(const CeForwardParams& p, int64_t r0, int64_t r1) { return by_dtype<forward_fn>(p, r0, r1); }
int64_t ce_backward(const CeBackwardParams& p, int64_t r0, int64_t r1) { return by_dtype<backward_fn>(p, r0, r1); }

}  // namespace

extern const CrossEntropyKernels cross_entropy_kernels;
const CrossEntropyKernels cross_entropy_kernels = {ce_forward, ce_backward};

}  // namespace CPU_CAPABILITY
}  // namespace s2s_fused::cpu
