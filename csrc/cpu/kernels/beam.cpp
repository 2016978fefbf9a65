// Beam-search top-k, stage 1 (per beam row), compiled once per CPU capability by setup.py. See beam_topk.h.
//
// One pass over a row, chunk by chunk: a vectorized compare against the current k-th best logit finds the rare
// lanes that enter the top-kk list (insertion into a sorted array); after each chunk, while it is still in L1,
// the running (max, sum-exp) pair is updated online (Milakov & Gimelshein 2018, at chunk granularity). Only the
// kk survivors are turned into scores: score = s + ((x - max) - log(sum)), the order of torch's log_softmax.
//
// Exactness: the selection ranks raw logits, but the op ranks the rounded scores (ties to the lower index). Two
// different logits can round to the same score (neighbouring floats, or x - max for tiny x next to a huge max),
// so a dropped logit could tie the last kept one and win on index. The list therefore keeps one extra entry, the
// best dropped logit: if its score equals the last kept one's, the row is ranked again by its rounded scores
// (rescan_row; rows of equal logits, such as a decoder's zeroed rows, always take it).
//
// Non-finite values (the rule in beam_topk.h): NaN never passes the "beats the k-th best" compare, so the
// selection itself ignores it, but the pass still tells a poisoned row (NaN or +inf logit, or only -inf) from
// its (max, sum-exp): the max is then +-inf or NaN, or the sum NaN (exp(NaN - max) reaches it), except for a NaN
// in a chunk that is -inf so far, which the chunk loop checks for. A poisoned row offers NaN candidates in index
// order. A NaN or +inf beam score does not rank by logit at all, so those rows take the exact path.
#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "beam_topk.h"
#include "cpu/kernels/vec_helpers.h"

namespace s2s_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kChunk = 2048;  // elements per online-softmax update: 8 KB of fp32, stays in L1

template <typename A>
inline A row_score(A s, A x, A m, A log_d) {
  return s + ((x - m) - log_d);
}

inline bool better(double sa, int64_t ia, double sb, int64_t ib) { return beam_rank_before(sa, ia, sb, ib); }

// Rows whose candidates all score `value` (-inf: an empty beam; NaN: a poisoned row) list the first kk indices
// but `skip`, in index order.
inline void fill_index_order(double* os, int64_t* oi, int64_t from, int64_t kk, int64_t base, int64_t V,
                             int64_t skip, double value) {
  int64_t v = 0;
  for (int64_t j = from; j < kk; ++j, ++v) {
    if (v == skip) ++v;
    if (v >= V) break;
    os[j] = value;
    oi[j] = base + v;
  }
}

struct Candidate {
  double score;
  int64_t index;
};

// The exact path: every score of the row, selected in a buffer of O(kk) candidates (the caller's `buf`, reused
// across rows): a candidate that does not beat the kk-th best seen so far is dropped at once, the others are
// appended, and a full buffer is cut back to its best kk with nth_element, so each candidate costs O(1) amortised
// and the memory stays O(kk) whatever V is. Used for k > kBeamFastMaxK and for NaN / +inf beam scores.
template <typename T>
void exact_row(const T* x, int64_t V, int64_t kk, double s_in, int64_t base, double* os, int64_t* oi,
               std::vector<Candidate>& buf) {
  using A = acc_t<T>;
  A m = -std::numeric_limits<A>::infinity();
  bool nan = false;
  for (int64_t v = 0; v < V; ++v) {
    const A xv = static_cast<A>(x[v]);
    nan |= xv != xv;
    m = xv > m ? xv : m;
  }
  // A poisoned row (beam_topk.h) scores NaN everywhere, as torch's log_softmax does.
  A log_d = std::numeric_limits<A>::quiet_NaN();
  if (!nan && std::isfinite(m)) {
    double d = 0;  // a long scalar sum: accumulate in double, then round like the fast path's log
    for (int64_t v = 0; v < V; ++v) d += std::exp(static_cast<double>(static_cast<A>(x[v]) - m));
    log_d = static_cast<A>(std::log(d));
  }
  const A s = static_cast<A>(s_in);
  const auto cmp = [](const Candidate& a, const Candidate& b) { return better(a.score, a.index, b.score, b.index); };
  const int64_t cap = std::max<int64_t>(2 * kk, kk + 1024);
  if (static_cast<int64_t>(buf.size()) < cap) buf.resize(cap);
  int64_t n = 0;
  Candidate cut{0, -1};  // the kk-th best so far, once the buffer has been cut
  for (int64_t v = 0; v < V; ++v) {
    const double sc = row_score<A>(s, static_cast<A>(x[v]), m, log_d);
    if (cut.index >= 0 && !better(sc, v, cut.score, cut.index)) continue;
    buf[n++] = {sc, v};
    if (n == cap) {
      std::nth_element(buf.begin(), buf.begin() + (kk - 1), buf.begin() + n, cmp);
      n = kk;
      cut = buf[kk - 1];
    }
  }
  std::partial_sort(buf.begin(), buf.begin() + kk, buf.begin() + n, cmp);  // n >= kk: V >= kk
  for (int64_t j = 0; j < kk; ++j) {
    os[j] = buf[j].score;
    oi[j] = base + buf[j].index;
  }
}

// The largest value of type T below x (x finite, representable in T).
template <typename T, typename A>
inline A below_in(A x) {
  if constexpr (std::is_same_v<T, A>) {
    return std::nextafter(x, -std::numeric_limits<A>::infinity());
  } else {
    uint16_t bits = T(x).x;
    bits = (bits & 0x7fff) == 0 ? uint16_t(0x8001) : (bits & 0x8000) ? uint16_t(bits + 1) : uint16_t(bits - 1);
    return static_cast<A>(T(bits, T::from_bits()));
  }
}

// Can a dropped logit tie the last kept candidate's score and win on index? xs holds kk kept logits and the best
// dropped one (xs[kk]), sorted by (logit desc, index asc).
template <typename T, typename A>
inline bool collides(const A* xs, int64_t kk, A s, A m, A log_d) {
  const A xk = xs[kk - 1];
  const A sk = row_score<A>(s, xk, m, log_d);
  if (row_score<A>(s, xs[kk], m, log_d) != sk) return false;  // every dropped logit scores strictly lower
  if (xs[kk] != xk || xk == -std::numeric_limits<A>::infinity()) return true;
  // An exact tie of logits (common in fp16/bf16): the dropped copies have higher indices than the kept ones and
  // every other dropped logit is <= the next value below in T. Safe unless that one, or a kept larger logit,
  // scores the same (then index order could put a dropped copy before a kept candidate).
  if (row_score<A>(s, below_in<T>(xk), m, log_d) == sk) return true;
  for (int64_t j = 0; j < kk - 1; ++j) {
    if (xs[j] != xk && row_score<A>(s, xs[j], m, log_d) == sk) return true;
  }
  return false;
}

// At most `cap` (<= kBeamFastMaxK + 1) (value, index) pairs, sorted by value descending, ties by index ascending.
// Values come in index order, so a new one goes below every kept value >= it; when full, the last one drops.
template <typename A>
struct Ranked {
  A val[kBeamFastMaxK + 1];
  int64_t idx[kBeamFastMaxK + 1];
  int64_t n = 0;
  const int64_t cap;
  explicit Ranked(int64_t c) : cap(c) {}
  void insert(A x, int64_t v) {
    int64_t pos = n < cap ? n++ : cap - 1;
    while (pos > 0 && val[pos - 1] < x) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = x;
    idx[pos] = v;
  }
};

// x[c0:c1] as accumulate-type values: x itself for float / double, else converted once into buf (kChunk long).
template <typename T>
inline const acc_t<T>* chunk_values(const T* x, int64_t c0, int64_t c1, acc_t<T>* buf) {
  using Vec = VecOf<T>;
  constexpr int64_t W = Vec::size();
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return x + c0;
  } else {
    int64_t j = c0;
    for (; j + W <= c1; j += W) {
      Vec xv;
      at::vec::load_to_float(x + j, xv);
      xv.store(buf + (j - c0));
    }
    for (; j < c1; ++j) buf[j - c0] = static_cast<acc_t<T>>(x[j]);
    return buf;
  }
}

// The single-pass path's fallback when a dropped logit may tie the last kept one's score (`collides`): the row
// again, ranked by the rounded scores themselves, computed as the pass computed the kept ones (its max and log of
// the sum). Scanning in index order, a candidate enters only with a score strictly above the kk-th best (an equal
// score has the higher index and loses), so this is the logit pass's vectorized compare-and-insert on scores: a
// row of equal logits (a decoder's zeroed dead rows) costs one compare per vector instead of the exact path's
// scalar double-precision pass.
template <typename T>
void rescan_row(const T* x, int64_t V, int64_t kk, acc_t<T> s, acc_t<T> m, acc_t<T> log_d, int64_t base,
                double* os, int64_t* oi) {
  using A = acc_t<T>;
  using Vec = VecOf<T>;
  constexpr int64_t W = Vec::size();
  Ranked<A> list(kk);
  const A* ss = list.val;
  const int64_t* vs = list.idx;
  alignas(64) A buf[std::is_same_v<T, A> ? 1 : kChunk];
  alignas(64) A sc[W];
  const Vec sv(s), mv(m), lv(log_d);
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t c1 = std::min(V, c0 + kChunk);
    const A* xc = chunk_values(x, c0, c1, buf);
    int64_t v = c0;
    for (; v < c1 && list.n < kk; ++v) list.insert(row_score<A>(s, xc[v - c0], m, log_d), v);  // the first kk
    Vec thr(ss[kk - 1]);
    for (; v + W <= c1; v += W) {
      const Vec scv = sv + ((Vec::loadu(xc + (v - c0)) - mv) - lv);  // row_score, lane by lane
      uint32_t beats = gt_bits(scv, thr);
      if (!beats) continue;
      scv.store(sc);
      for (; beats; beats &= beats - 1) {
        const int64_t l = std::countr_zero(beats);
        if (sc[l] > ss[kk - 1]) list.insert(sc[l], v + l);
      }
      thr = Vec(ss[kk - 1]);
    }
    for (; v < c1; ++v) {
      const A scl = row_score<A>(s, xc[v - c0], m, log_d);
      if (scl > ss[kk - 1]) list.insert(scl, v);
    }
  }
  for (int64_t j = 0; j < kk; ++j) {
    os[j] = ss[j];
    oi[j] = base + vs[j];
  }
}

template <typename T>
void fast_row(const T* x, int64_t V, int64_t kk, double s_in, int64_t base, double* os, int64_t* oi) {
  using A = acc_t<T>;
  using Vec = VecOf<T>;
  constexpr int64_t W = Vec::size();
  constexpr int kAllLanes = (1 << W) - 1;
  const A ninf = -std::numeric_limits<A>::infinity();
  const int64_t cap = std::min(kk + 1, V);  // kk kept + the best dropped one
  Ranked<A> list(cap);
  const A* xs = list.val;
  const int64_t* vs = list.idx;
  A m = ninf, d = 0;
  bool nan_unsummed = false;  // a NaN in a chunk skipped below as all -inf
  int64_t v0 = 0;
  // The first cap elements always enter (also -inf ones, which then rank by index).
  for (; v0 < cap; ++v0) list.insert(static_cast<A>(x[v0]), v0);
  alignas(64) A buf[std::is_same_v<T, A> ? 1 : kChunk];  // half / bfloat16 chunks, converted once
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t c1 = std::min(V, c0 + kChunk);
    const A* xc = chunk_values(x, c0, c1, buf);  // xc[v - c0] = x[v]
    int64_t v = std::max(c0, v0);
    Vec thr(xs[cap - 1]);
    for (; v + W <= c1; v += W) {
      uint32_t beats = gt_bits(Vec::loadu(xc + (v - c0)), thr);
      if (!beats) continue;  // no lane beats the k-th best: the common case
      // Only the lanes that beat the threshold at the compare, in index order, each against the list as the
      // earlier ones left it (a one-mask-instruction test: scanning all W lanes took a third of the op's time).
      for (; beats; beats &= beats - 1) {
        const int64_t l = std::countr_zero(beats);
        const A xl = xc[v - c0 + l];
        if (xl > xs[cap - 1]) list.insert(xl, v + l);
      }
      thr = Vec(xs[cap - 1]);
    }
    for (; v < c1; ++v) {
      const A xl = xc[v - c0];
      if (xl > xs[cap - 1]) list.insert(xl, v);
    }
    // Online (max, sum-exp) over the chunk, whose max is now the list's head.
    const A m_new = xs[0];
    if (m_new == ninf) {  // everything so far is -inf or NaN: nothing to sum, but a NaN poisons the row
      for (int64_t j = c0; j < c1; ++j) nan_unsummed |= xc[j - c0] != xc[j - c0];
      continue;
    }
    const A scale = m == ninf ? A(0) : std::exp(m - m_new);
    const Vec mv(m_new);
    Vec acc(A(0));
    int64_t j = c0;
    if constexpr (std::is_same_v<A, float>) {
      // exp_u20: a few ulp more error per term than Sleef's exp, and the op 14-17 % faster at the beam-4 decoding
      // shape (benchmarks/NOTES.md, beam). It clamps its input, which may turn NaN into a finite value, so NaN
      // lanes are flagged on the side: a NaN logit must still poison the row.
      // Two accumulators: one add chain per vector was the loop's critical path.
      Vec nan_lanes(A(0)), acc2(A(0));
      for (; j + 2 * W <= c1; j += 2 * W) {
        const Vec xv = Vec::loadu(xc + (j - c0)), xv2 = Vec::loadu(xc + (j - c0) + W);
        nan_lanes = nan_lanes | (xv != xv) | (xv2 != xv2);
        acc = acc + (xv - mv).exp_u20();
        acc2 = acc2 + (xv2 - mv).exp_u20();
      }
      for (; j + W <= c1; j += W) {
        const Vec xv = Vec::loadu(xc + (j - c0));
        nan_lanes = nan_lanes | (xv != xv);
        acc = acc + (xv - mv).exp_u20();
      }
      acc = acc + acc2;
      nan_unsummed |= nan_lanes.zero_mask() != kAllLanes;
    } else {
      for (; j + W <= c1; j += W) acc = acc + (Vec::loadu(xc + (j - c0)) - mv).exp();
    }
    A part = at::vec::vec_reduce_all<A>([](Vec& a, Vec& b) { return a + b; }, acc);
    for (; j < c1; ++j) part += std::exp(xc[j - c0] - m_new);
    d = d * scale + part;
    m = m_new;
  }
  // Poisoned (see the file comment): m is +inf, -inf (only -inf logits) or NaN, or d is NaN.
  if (!std::isfinite(m) || !std::isfinite(d) || nan_unsummed) {
    fill_index_order(os, oi, 0, kk, base, V, -1, std::numeric_limits<double>::quiet_NaN());
    return;
  }
  const A log_d = std::log(d);
  const A s = static_cast<A>(s_in);
  // Collision check (see the file comment): only when some logits were dropped.
  if (V > kk && collides<T>(xs, kk, s, m, log_d)) {
    rescan_row<T>(x, V, kk, s, m, log_d, base, os, oi);
    return;
  }
  for (int64_t j = 0; j < kk; ++j) {
    os[j] = row_score<A>(s, xs[j], m, log_d);
    oi[j] = base + vs[j];
  }
  // Distinct kept logits can still round to equal scores: restore index order among them (insertion sort, the
  // list is already sorted by score).
  for (int64_t j = 1; j < kk; ++j) {
    const double sj = os[j];
    const int64_t ij = oi[j];
    int64_t p = j;
    while (p > 0 && better(sj, ij, os[p - 1], oi[p - 1])) {
      os[p] = os[p - 1];
      oi[p] = oi[p - 1];
      --p;
    }
    os[p] = sj;
    oi[p] = ij;
  }
}

template <typename T>
void beam_rows_impl(const BeamRowParams& p, int64_t r0, int64_t r1) {
  const double ninf = -std::numeric_limits<double>::infinity();
  std::vector<Candidate> exact_buf;  // the exact path's, sized on first use
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.K, i = r % p.K;
    const int64_t base = i * p.V;
    double* os = p.cand_score + r * p.kk;
    int64_t* oi = p.cand_index + r * p.kk;
    const double s = p.beam_scores[r];
    if (p.finished && p.finished[r]) {
      // A finished beam offers one candidate, (s, eos); the rest of its row ranks as -inf, by index.
      if (s == ninf) {
        fill_index_order(os, oi, 0, p.kk, base, p.V, -1, ninf);
      } else {
        os[0] = s;
        oi[0] = base + p.eos_id;
        fill_index_order(os, oi, 1, p.kk, base, p.V, p.eos_id, ninf);
      }
      continue;
    }
    if (s == ninf) {
      fill_index_order(os, oi, 0, p.kk, base, p.V, -1, ninf);
      continue;
    }
    const T* x = static_cast<const T*>(p.logits) + b * p.stride_b + i * p.stride_k;
    // A NaN or +inf score makes every candidate NaN or +inf: they rank by index, not by logit.
    if (p.exact || !std::isfinite(s)) {
      exact_row<T>(x, p.V, p.kk, s, base, os, oi, exact_buf);
    } else {
      fast_row<T>(x, p.V, p.kk, s, base, os, oi);
    }
  }
}

void beam_rows(const BeamRowParams& p, int64_t r0, int64_t r1) {
  switch (p.dtype) {
    case Dtype::Float32: return beam_rows_impl<float>(p, r0, r1);
    case Dtype::Float64: return beam_rows_impl<double>(p, r0, r1);
    case Dtype::Float16: return beam_rows_impl<c10::Half>(p, r0, r1);
    case Dtype::BFloat16: return beam_rows_impl<c10::BFloat16>(p, r0, r1);
  }
}

}  // namespace

extern const BeamKernels beam_kernels;
const BeamKernels beam_kernels = {beam_rows};

}  // namespace CPU_CAPABILITY
}  // namespace s2s_fused::cpu
