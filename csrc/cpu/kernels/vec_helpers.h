// Helpers for the per-capability kernel files: at::vec loads/stores that round once, for every dtype.
// Included only by csrc/cpu/kernels/*.cpp, which setup.py compiles once per CPU capability.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>

namespace s2s_fused::cpu {
namespace CPU_CAPABILITY {

// float for float/half/bfloat16 (fp32 accumulate), double for double.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
using VecOf = at::vec::Vectorized<acc_t<T>>;

// Load n (<= size) elements as accumulate-type lanes; missing lanes read as zero.
template <typename T>
inline VecOf<T> vload(const T* p, int64_t n) {
  using V = VecOf<T>;
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return n == V::size() ? V::loadu(p) : V::loadu(p, n);
  } else {
    alignas(64) acc_t<T> buf[V::size()] = {};
    for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<acc_t<T>>(p[k]);
    return V::loadu(buf);
  }
}

// Like vload but a null pointer reads as zero (optional operands).
template <typename T>
inline VecOf<T> vload_or_zero(const T* p, int64_t n) {
  return p ? vload(p, n) : VecOf<T>(acc_t<T>(0));
}

template <typename T>
inline void vstore(T* p, const VecOf<T>& v, int64_t n) {
  using V = VecOf<T>;
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    if (n == V::size()) v.store(p); else v.store(p, n);
  } else {
    alignas(64) acc_t<T> buf[V::size()];
    v.store(buf);
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(buf[k]);
  }
}

// Bit l set where lane l of a > b (ordered: false for NaN). One mask instruction on AVX-512 / AVX2; the scalar
// build compares lane by lane.
template <typename V>
inline uint32_t gt_bits(const V& a, const V& b) {
  using S = typename V::value_type;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<S, float>) return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
  if constexpr (std::is_same_v<S, double>) return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<S, float>) return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)));
  if constexpr (std::is_same_v<S, double>) return uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ)));
#endif
  alignas(64) S av[V::size()], bv[V::size()];
  a.store(av);
  b.store(bv);
  uint32_t bits = 0;
  for (int64_t l = 0; l < V::size(); ++l) bits |= uint32_t(av[l] > bv[l]) << l;
  return bits;
}

// Sum of the lanes.
template <typename A, typename V>
inline A hsum(const V& v) {
  alignas(64) A buf[V::size()];
  v.store(buf);
  A s = 0;
  for (int64_t k = 0; k < V::size(); ++k) s += buf[k];
  return s;
}

// exp for fp32 lanes through ATen's exp_u20 (about 20 ulp, 1e-6 relative: far inside the fp32 tolerance of every
// output it feeds, and cheaper than Sleef's exp: the attention op at the beam-4 decoding shape ran 11 % faster,
// benchmarks/NOTES.md), exact exp for fp64. exp_u20 clamps its input, which would turn NaN into a finite value:
// NaN lanes are put back.
// (gcc 12 reports the _mm512_undefined_* operands inside exp_u20 as uninitialized where it is inlined: a false
// positive, silenced for this function only.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
template <typename V>
inline V vexp(const V& x) {
  using S = typename V::value_type;
  if constexpr (std::is_same_v<S, float>) {
    return V::blendv(x.exp_u20(), x, x != x);
  } else {
    return x.exp();
  }
}
#pragma GCC diagnostic pop

template <typename V>
inline V vsigmoid(const V& x) {
  using S = typename V::value_type;
  return V(S(1)) / (V(S(1)) + vexp(x.neg()));
}

// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 1: one exp and one division, no overflow. Sleef's
// tanh took as long as the rest of the LSTM pointwise pass together (perf, benchmarks/NOTES.md rnn_layer); this
// form's absolute error is a few ulp of 1 (|e|'s rounding, not amplified), within every tolerance we use.
template <typename V>
inline V vtanh(const V& x) {
  using S = typename V::value_type;
  const V ax = x.abs();
  const V e = vexp(ax * V(S(-2)));
  const V t = (V(S(1)) - e) / (V(S(1)) + e);
  return V::blendv(t, t.neg(), x < V(S(0)));
}

}  // namespace CPU_CAPABILITY
}  // namespace s2s_fused::cpu
