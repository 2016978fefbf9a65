// Additive and dot attention, forward and backward, over query rows [n0, n1) (see csrc/attention.h). Compiled once per
// CPU capability by setup.py.
//
// Per query row, forward reads its source row's keys[:L] once (tanh and the v-dot fused, vectorised over H) and
// values[:L] once; the masked positions s >= L are never read. The R query rows of a source row are consecutive,
// so the R - 1 after the first find its keys and values in cache. Backward recomputes tanh into a per-row scratch
// of L*H, then reads values[:L] once and writes the row's slice of grad_keys and grad_values once.
#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"
#include "cpu/kernels/vec_helpers.h"

namespace s2s_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
inline T zero() {
  return static_cast<T>(0.0f);
}

// sc[s] = the lanes' sum of term(s, h, lanes, acc) over h, for s < L: term returns acc plus the score's terms at
// h .. h + lanes (missing lanes adding 0). Two vectors of h per iteration, each with its own accumulator: the
// additive score's tanh is a long chain of dependent instructions, and two independent ones side by side ran the op
// 5-12 % faster at the beam-4 decoding shape (AMD EPYC Zen 3, 1 thread, interleaved in-process); four gained
// nothing more.
template <typename T, typename Term>
void row_scores(int64_t L, int64_t H, acc_t<T>* sc, const Term& term) {
  using A = acc_t<T>;
  using Vec = VecOf<T>;
  constexpr int64_t W = Vec::size();
  for (int64_t s = 0; s < L; ++s) {
    Vec acc(A(0)), acc2(A(0));
    int64_t h = 0;
    for (; h + 2 * W <= H; h += 2 * W) {
      acc = term(s, h, W, acc);
      acc2 = term(s, h + W, W, acc2);
    }
    for (; h < H; h += W) acc = term(s, h, std::min<int64_t>(W, H - h), acc);
    sc[s] = hsum<A>(acc + acc2);
  }
}

// Query row n's scores into sc (L): additive v . tanh(qp + k_s), its tanh also into t (L, H) if not null; or dot
// qp . k_s (t unused). A: accumulate type.
template <typename T>
void scores_of_row(const AttnRows& p, int64_t n, int64_t L, acc_t<T>* t, acc_t<T>* sc) {
  using Vec = VecOf<T>;
  const int64_t H = p.H;
  const T* keys = static_cast<const T*>(p.keys) + n / p.R * p.S * H;
  const acc_t<T>* qp = static_cast<const acc_t<T>*>(p.qp) + n * H;
  if (p.dot) {
    row_scores<T>(L, H, sc, [&](int64_t s, int64_t h, int64_t m, const Vec& acc) {
      return at::vec::fmadd(vload(keys + s * H + h, m), vload(qp + h, m), acc);
    });
    return;
  }
  const T* v = static_cast<const T*>(p.v);
  row_scores<T>(L, H, sc, [&](int64_t s, int64_t h, int64_t m, const Vec& acc) {
    const Vec th = vtanh(vload(keys + s * H + h, m) + vload(qp + h, m));
    if (t) vstore(t + s * H + h, th, m);
    return at::vec::fmadd(th, vload(v + h, m), acc);  // missing lanes of v read 0
  });
}

// Softmax of sc[0..L) in place (L >= 1).
template <typename A>
void softmax_in_place(A* sc, int64_t L) {
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t s = 0; s < L; ++s) m = std::max(m, sc[s]);
  A sum = 0;
  for (int64_t s = 0; s < L; ++s) {
    sc[s] = std::exp(sc[s] - m);
    sum += sc[s];
  }
  const A inv = A(1) / sum;
  for (int64_t s = 0; s < L; ++s) sc[s] *= inv;
}

// out (Dv) = sum over s < used of w[s] values[s, :], each lane summed in the order of s. kBlock vectors of out at a
// time, each its own accumulator, over the rows s: one accumulator walked down the rows, vector by vector, was a
// chain of dependent multiply-adds on loads a values row apart (a third of the op's time in perf at the beam-4
// decoding shape); this walks each row's block contiguously with kBlock independent chains. Same sums, same order.
template <typename T>
void context_of_row(const acc_t<T>* w, const T* values, int64_t used, int64_t Dv, T* out) {
  using A = acc_t<T>;
  using Vec = VecOf<T>;
  constexpr int64_t W = Vec::size();
  constexpr int64_t kBlock = 8;
  int64_t d0 = 0;
  for (; d0 + kBlock * W <= Dv; d0 += kBlock * W) {
    Vec acc[kBlock];
#pragma GCC unroll 8
    for (int64_t j = 0; j < kBlock; ++j) acc[j] = Vec(A(0));
    for (int64_t s = 0; s < used; ++s) {
      const Vec ws(w[s]);
      const T* row = values + s * Dv + d0;
#pragma GCC unroll 8
      for (int64_t j = 0; j < kBlock; ++j) acc[j] = at::vec::fmadd(ws, vload(row + j * W, W), acc[j]);
    }
#pragma GCC unroll 8
    for (int64_t j = 0; j < kBlock; ++j) vstore(out + d0 + j * W, acc[j], W);
  }
  for (int64_t d = d0; d < Dv; d += W) {
    const int64_t k = std::min<int64_t>(W, Dv - d);
    Vec acc(A(0));
    for (int64_t s = 0; s < used; ++s) acc = at::vec::fmadd(Vec(w[s]), vload(values + s * Dv + d, k), acc);
    vstore(out + d, acc, k);
  }
}

template <typename T>
void forward_impl(const AttnForwardParams& prm, int64_t n0, int64_t n1) {
  using A = acc_t<T>;
  const AttnRows& p = prm.rows;
  const int64_t S = p.S, Dv = p.Dv;
  std::vector<A> w(S);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t b = n / p.R, L = p.valid_len[b];
    if (L == 0) {
      std::fill(w.begin(), w.end(), A(1) / A(S));
    } else {
      scores_of_row<T>(p, n, L, nullptr, w.data());
      softmax_in_place(w.data(), L);
      std::fill(w.begin() + L, w.end(), A(0));
    }
    const int64_t used = L == 0 ? S : L;
    context_of_row<T>(w.data(), static_cast<const T*>(p.values) + b * S * Dv, used, Dv,
                      static_cast<T*>(prm.context) + n * Dv);
    T* wout = static_cast<T*>(prm.weights) + n * S;
    for (int64_t s = 0; s < S; ++s) wout[s] = static_cast<T>(w[s]);
  }
}

// G: the type of grad_keys / grad_values, T for R = 1, acc_t<T> for R > 1 (csrc/attention.h).
template <typename T, typename G>
void backward_impl(const AttnBackwardParams& prm, int64_t n0, int64_t n1) {
  using A = acc_t<T>;
  using Vec = VecOf<T>;
  constexpr int64_t W = Vec::size();
  const AttnRows& p = prm.rows;
  const int64_t S = p.S, H = p.H, Dv = p.Dv;
  std::vector<A> t, w(S), ds(S);
  const T* vvec = static_cast<const T*>(p.v);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t b = n / p.R, L = p.valid_len[b];
    const T* g = static_cast<const T*>(prm.grad_context) + n * Dv;
    const T* gw = prm.grad_weights ? static_cast<const T*>(prm.grad_weights) + n * S : nullptr;
    const T* values = static_cast<const T*>(p.values) + b * S * Dv;
    G* gk = static_cast<G*>(prm.grad_keys) + n * S * H;
    G* gv = static_cast<G*>(prm.grad_values) + n * S * Dv;
    A* gqp = static_cast<A*>(prm.grad_qp) + n * H;
    A* gvr = prm.grad_v_rows ? static_cast<A*>(prm.grad_v_rows) + n * H : nullptr;  // null: dot scores
    if (L == 0) {
      // constant weights 1/S: only the values get a gradient
      const Vec inv(A(1) / A(S));
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t d = 0; d < Dv; d += W) {
          const int64_t k = std::min<int64_t>(W, Dv - d);
          vstore(gv + s * Dv + d, vload(g + d, k) * inv, k);
        }
      }
      std::fill(gk, gk + S * H, zero<G>());
      std::fill(gqp, gqp + H, A(0));
      if (gvr) std::fill(gvr, gvr + H, A(0));
      continue;
    }
    if (!p.dot) t.resize(L * H);
    scores_of_row<T>(p, n, L, p.dot ? nullptr : t.data(), w.data());
    softmax_in_place(w.data(), L);
    // d loss / d weights_s = g . values_s (+ grad_weights_s); grad_values_s = weights_s g
    A sigma = 0;
    for (int64_t s = 0; s < L; ++s) {
      // Two accumulators, as in scores_of_row: one was a chain of Dv / W dependent multiply-adds per position.
      Vec acc(A(0)), acc2(A(0));
      const Vec ws(w[s]);
      const T* vs = values + s * Dv;
      G* gvs = gv + s * Dv;
      int64_t d = 0;
      for (; d + 2 * W <= Dv; d += 2 * W) {
        const Vec gd = vload(g + d, W), gd2 = vload(g + d + W, W);
        acc = at::vec::fmadd(gd, vload(vs + d, W), acc);
        acc2 = at::vec::fmadd(gd2, vload(vs + d + W, W), acc2);
        vstore(gvs + d, gd * ws, W);
        vstore(gvs + d + W, gd2 * ws, W);
      }
      for (; d < Dv; d += W) {
        const int64_t k = std::min<int64_t>(W, Dv - d);
        const Vec gd = vload(g + d, k);
        acc = at::vec::fmadd(gd, vload(vs + d, k), acc);
        vstore(gvs + d, gd * ws, k);
      }
      ds[s] = hsum<A>(acc + acc2) + (gw ? static_cast<A>(gw[s]) : A(0));
      sigma += w[s] * ds[s];
    }
    std::fill(gv + L * Dv, gv + S * Dv, zero<G>());
    for (int64_t s = 0; s < L; ++s) ds[s] = w[s] * (ds[s] - sigma);  // d loss / d score_s
    if (p.dot) {
      // d loss / d k_s = ds_s qp; d loss / d qp = sum_s ds_s k_s
      const T* keys = static_cast<const T*>(p.keys) + b * S * H;
      const A* qp = static_cast<const A*>(p.qp) + n * H;
      for (int64_t h = 0; h < H; h += W) {
        const int64_t k = std::min<int64_t>(W, H - h);
        const Vec qh = vload(qp + h, k);
        Vec aq(A(0));
        for (int64_t s = 0; s < L; ++s) {
          const Vec dss(ds[s]);
          vstore(gk + s * H + h, dss * qh, k);
          aq = at::vec::fmadd(dss, vload(keys + s * H + h, k), aq);
        }
        aq.store(gqp + h, k);
      }
      std::fill(gk + L * H, gk + S * H, zero<G>());
      continue;
    }
    // d loss / d (qp + k_s)_h = ds_s v_h (1 - t_sh^2); summed over s it is d loss / d qp
    for (int64_t h = 0; h < H; h += W) {
      const int64_t k = std::min<int64_t>(W, H - h);
      const Vec vh = vload(vvec + h, k);
      Vec aq(A(0)), av(A(0));
      for (int64_t s = 0; s < L; ++s) {
        const Vec th = Vec::loadu(t.data() + s * H + h, k);
        const Vec dss(ds[s]);
        const Vec dpre = dss * vh * (Vec(A(1)) - th * th);
        vstore(gk + s * H + h, dpre, k);
        aq = aq + dpre;
        av = at::vec::fmadd(dss, th, av);
      }
      aq.store(gqp + h, k);
      av.store(gvr + h, k);
    }
    std::fill(gk + L * H, gk + S * H, zero<G>());
  }
}

void attn_forward(const AttnForwardParams& p, int64_t n0, int64_t n1) {
  switch (p.rows.dtype) {
    case Dtype::Float32: return forward_impl<float>(p, n0, n1);
    case Dtype::Float64: return forward_impl<double>(p, n0, n1);
    case Dtype::Float16: return forward_impl<c10::Half>(p, n0, n1);
    case Dtype::BFloat16: return forward_impl<c10::BFloat16>(p, n0, n1);
  }
}

template <typename T>
void backward_of(const AttnBackwardParams& p, int64_t n0, int64_t n1) {
  if (p.rows.R == 1) return backward_impl<T, T>(p, n0, n1);
  backward_impl<T, acc_t<T>>(p, n0, n1);
}

void attn_backward(const AttnBackwardParams& p, int64_t n0, int64_t n1) {
  switch (p.rows.dtype) {
    case Dtype::Float32: return backward_of<float>(p, n0, n1);
    case Dtype::Float64: return backward_of<double>(p, n0, n1);
    case Dtype::Float16: return backward_of<c10::Half>(p, n0, n1);
    case Dtype::BFloat16: return backward_of<c10::BFloat16>(p, n0, n1);
  }
}

}  // namespace

extern const AttentionKernels attention_kernels;
const AttentionKernels attention_kernels = {attn_forward, attn_backward};

}  // namespace CPU_CAPABILITY
}  // namespace s2s_fused::cpu
