// Beam-search top-k CUDA kernels (semantics: s2s_fused/ops/beam.py; design: csrc/beam_topk.h).
//
// 1. beam_chunk_kernel, grid (B*K, P), one block per vocabulary chunk of a beam row: one read of each logit keeps
//    the thread's online (max, sum-exp) (Milakov & Gimelshein 2018, Alg. 3) and its top-CAP raw logits in a
//    sorted list (ties to the lower index); the block then combines the (max, sum-exp) pairs and merges the lists
//    by CAP rounds of block argmax (the winner's thread advances; FasterTransformer / TensorRT-LLM). Finished
//    beams select by (eos -> +inf, rest -> -inf) and empty (-inf) beams by -inf, so both yield index order.
// 2. beam_merge_kernel, grid (B,): per beam the chunks' (max, sum-exp) -> (max, log sum); every offered chunk
//    entry becomes a score s + ((x - max) - log sum) and the block keeps the top k by (score desc, flat asc).
//    Each chunk kept one entry more than it offers; if that one rounds to the same score as the last offered,
//    a dropped logit could win a tie on index, and the block recomputes the whole batch row exactly instead.
//
// Non-finite values follow torch (csrc/beam_topk.h): a chunk that meets a NaN or +inf logit stores a NaN max, and
// a beam with such a chunk or only -inf logits gets log-sum-exp NaN, so every score computed for it is NaN. Such a
// beam, and one whose score is NaN or +inf, does not rank by logit, so its batch row takes the exact recompute;
// everything ranks with beam_rank_before (NaN above +inf, equal scores to the lower index).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "beam.cuh"
#include "cuda/acc.cuh"
#include "beam_topk.h"

namespace s2s_fused::cuda {
namespace {

template <typename A>
__device__ __forceinline__ A neg_inf() { return -INFINITY; }

// The op's order (beam_rank_before: value desc with NaN first, index asc); index < 0 marks an empty slot, which
// loses to everything.
template <typename A>
__device__ __forceinline__ bool better(A xa, int64_t ia, A xb, int64_t ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  return beam_rank_before(xa, ia, xb, ib);
}

template <typename A, int CAP>
__device__ __forceinline__ void list_init(A (&xs)[CAP], int64_t (&is)[CAP]) {
#pragma unroll
  for (int j = 0; j < CAP; ++j) {
    xs[j] = neg_inf<A>();
    is[j] = -1;
  }
}

template <typename A, int CAP>
__device__ __forceinline__ void list_insert(A (&xs)[CAP], int64_t (&is)[CAP], A x, int64_t i) {
  if (!better(x, i, xs[CAP - 1], is[CAP - 1])) return;
  int p = CAP - 1;
  while (p > 0 && better(x, i, xs[p - 1], is[p - 1])) {
    xs[p] = xs[p - 1];
    is[p] = is[p - 1];
    --p;
  }
  xs[p] = x;
  is[p] = i;
}

// The block's best n of all threads' sorted lists, written by thread 0 to out_x/out_i (n rounds of argmax).
template <typename A, int CAP, int BLOCK>
__device__ void block_merge(const A (&xs)[CAP], const int64_t (&is)[CAP], int n, A* out_x, int64_t* out_i) {
  __shared__ A sx[BLOCK];
  __shared__ int64_t si[BLOCK];
  __shared__ int st[BLOCK];
  const int tid = threadIdx.x;
  int head = 0;
  for (int j = 0; j < n; ++j) {
    sx[tid] = head < CAP ? xs[head] : neg_inf<A>();
    si[tid] = head < CAP ? is[head] : -1;
    st[tid] = tid;
    __syncthreads();
    for (int w = BLOCK / 2; w > 0; w /= 2) {
      if (tid < w && better(sx[tid + w], si[tid + w], sx[tid], si[tid])) {
        sx[tid] = sx[tid + w];
        si[tid] = si[tid + w];
        st[tid] = st[tid + w];
      }
      __syncthreads();
    }
    if (tid == 0) {
      out_x[j] = sx[0];
      out_i[j] = si[0];
    }
    if (st[0] == tid && si[0] >= 0) ++head;
    __syncthreads();
  }
}

template <typename A>
__device__ __forceinline__ void md_combine(A& m, A& d, A m2, A d2) {
  if (m2 == neg_inf<A>()) return;
  if (m == neg_inf<A>()) {
    m = m2;
    d = d2;
    return;
  }
  const A mx = m > m2 ? m : m2;
  d = d * exp(m - mx) + d2 * exp(m2 - mx);
  m = mx;
}

template <typename T, int CAP, int BLOCK>
__global__ void __launch_bounds__(BLOCK) beam_chunk_kernel(
    const T* __restrict__ logits, int64_t sb, int64_t sk, int64_t sv, const float* __restrict__ beam_scores,
    const bool* __restrict__ finished, int64_t eos_id, int64_t K, int64_t V, int64_t P, int64_t chunk,
    typename Acc<T>::type* part_x, int64_t* part_v, typename Acc<T>::type* part_m,
    typename Acc<T>::type* part_d) {
  using A = typename Acc<T>::type;
  const int64_t r = blockIdx.x, c = blockIdx.y;
  const int64_t b = r / K, i = r % K;
  const T* row = logits + b * sb + i * sk;
  const A s = beam_scores[r];
  const bool fin = finished != nullptr && finished[r];
  const int64_t v0 = c * chunk, v1 = min(V, v0 + chunk);
  A xs[CAP];
  int64_t is[CAP];
  list_init(xs, is);
  A m = neg_inf<A>(), d = 0;
  int poisoned = 0;  // this thread met a NaN or +inf logit
  for (int64_t v = v0 + threadIdx.x; v < v1; v += BLOCK) {
    const A x = to_acc(row[v * sv]);
    if (x != x || x == A(INFINITY)) {
      poisoned = 1;  // kept out of (m, d), which stay well defined
    } else if (x > m) {
      d = (m == neg_inf<A>() ? A(0) : d * exp(m - x)) + A(1);
      m = x;
    } else if (x != neg_inf<A>()) {
      d += exp(x - m);
    }
    A sel = s == neg_inf<A>() ? neg_inf<A>() : x;
    if (fin) sel = v == eos_id ? A(INFINITY) : neg_inf<A>();
    list_insert(xs, is, sel, v);
  }
  __shared__ A sm[BLOCK];
  __shared__ A sd[BLOCK];
  sm[threadIdx.x] = m;
  sd[threadIdx.x] = d;
  const bool chunk_poisoned = __syncthreads_or(poisoned) != 0;  // also the barrier before the reduction
  for (int w = BLOCK / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) md_combine(sm[threadIdx.x], sd[threadIdx.x], sm[threadIdx.x + w], sd[threadIdx.x + w]);
    __syncthreads();
  }
  const int64_t base = r * P + c;
  if (threadIdx.x == 0) {
    part_m[base] = chunk_poisoned ? A(NAN) : sm[0];
    part_d[base] = sd[0];
  }
  block_merge<A, CAP, BLOCK>(xs, is, CAP, part_x + base * CAP, part_v + base * CAP);
}

template <typename A>
struct RowScorer {
  const float* beam_scores;
  const bool* finished;
  const A* lse;
  int64_t eos_id;
  __device__ __forceinline__ bool normal(int64_t r) const {
    return beam_scores[r] != -INFINITY && !(finished != nullptr && finished[r]);
  }
  // A NaN lse[2r + 1] marks a poisoned beam; with a NaN or +inf score the candidates rank by index, not logit.
  __device__ __forceinline__ bool ranks_by_logit(int64_t r) const {
    const float s = beam_scores[r];
    return !normal(r) || (s == s && s != INFINITY && lse[2 * r + 1] == lse[2 * r + 1]);
  }
  __device__ __forceinline__ A operator()(int64_t r, A x, int64_t v) const {
    const A s = beam_scores[r];
    if (finished != nullptr && finished[r]) return v == eos_id ? s : neg_inf<A>();
    if (s == neg_inf<A>()) return neg_inf<A>();
    return s + ((x - lse[2 * r]) - lse[2 * r + 1]);
  }
};

template <typename T, int CAP, int BLOCK>
__global__ void __launch_bounds__(BLOCK) beam_merge_kernel(
    const T* __restrict__ logits, int64_t sb, int64_t sk, int64_t sv, const float* __restrict__ beam_scores,
    const bool* __restrict__ finished, int64_t eos_id, int64_t K, int64_t V, int64_t P, int64_t k,
    const typename Acc<T>::type* part_x, const int64_t* part_v, const typename Acc<T>::type* part_m,
    const typename Acc<T>::type* part_d, typename Acc<T>::type* lse, float* out_s, int64_t* out_b,
    int64_t* out_t) {
  using A = typename Acc<T>::type;
  const int64_t b = blockIdx.x;
  const RowScorer<A> score{beam_scores, finished, lse, eos_id};
  __shared__ int collide;
  if (threadIdx.x == 0) collide = 0;
  int unordered = 0;  // a beam of this thread does not rank by logit
  for (int64_t i = threadIdx.x; i < K; i += BLOCK) {
    const int64_t r = b * K + i;
    A m = neg_inf<A>(), d = 0;
    bool poisoned = false;
    for (int64_t c = 0; c < P; ++c) {
      const A pm = part_m[r * P + c];
      if (pm != pm) {
        poisoned = true;
      } else {
        md_combine(m, d, pm, part_d[r * P + c]);
      }
    }
    poisoned |= m == neg_inf<A>();  // only -inf logits: x - max is NaN
    lse[2 * r] = m;
    lse[2 * r + 1] = poisoned ? A(NAN) : log(d);  // every score of a poisoned beam is NaN
    unordered |= !score.ranks_by_logit(r);
  }
  // The barrier makes lse (global) and collide's reset visible to the block; rows that do not rank by logit take
  // the exact recompute below.
  const bool row_unordered = __syncthreads_or(unordered) != 0;
  A xs[CAP];
  int64_t is[CAP];
  list_init(xs, is);
  const int64_t offered = CAP - 1;
  const int64_t total = K * P * offered;
  for (int64_t j = threadIdx.x; j < total; j += BLOCK) {
    const int64_t i = j / (P * offered), rem = j % (P * offered);
    const int64_t c = rem / offered, e = rem % offered;
    const int64_t r = b * K + i;
    const int64_t idx = (r * P + c) * CAP + e;
    const int64_t v = part_v[idx];
    if (v < 0) continue;
    const A sc = score(r, part_x[idx], v);
    list_insert(xs, is, sc, i * V + v);
    if (e == offered - 1 && score.normal(r)) {
      const int64_t vd = part_v[idx + 1];
      if (vd >= 0 && score(r, part_x[idx + 1], vd) == sc) collide = 1;
    }
  }
  __syncthreads();
  if (collide || row_unordered) {  // rare: every score of the batch row, exactly
    list_init(xs, is);
    for (int64_t j = threadIdx.x; j < K * V; j += BLOCK) {
      const int64_t i = j / V, v = j % V;
      const A x = to_acc(logits[b * sb + i * sk + v * sv]);
      list_insert(xs, is, score(b * K + i, x, v), j);
    }
  }
  __shared__ A top_x[CAP];
  __shared__ int64_t top_i[CAP];
  block_merge<A, CAP, BLOCK>(xs, is, static_cast<int>(k), top_x, top_i);
  __syncthreads();
  for (int64_t j = threadIdx.x; j < k; j += BLOCK) {
    out_s[b * k + j] = static_cast<float>(top_x[j]);
    out_b[b * k + j] = top_i[j] / V;
    out_t[b * k + j] = top_i[j] % V;
  }
}

template <typename T, int CAP>
void launch_typed(const T* logits, int64_t sb, int64_t sk, int64_t sv, const float* bs, const bool* fin,
                  int64_t eos, int64_t B, int64_t K, int64_t V, int64_t k, const BeamPlan& plan, void* part_x,
                  int64_t* part_v, void* part_m, void* part_d, void* lse, float* out_s, int64_t* out_b,
                  int64_t* out_t, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int kChunkBlock = 128, kMergeBlock = 256;
  const dim3 grid1(static_cast<unsigned>(B * K), static_cast<unsigned>(plan.parts));
  beam_chunk_kernel<T, CAP, kChunkBlock><<<grid1, kChunkBlock, 0, stream>>>(
      logits, sb, sk, sv, bs, fin, eos, K, V, plan.parts, plan.chunk, static_cast<A*>(part_x), part_v,
      static_cast<A*>(part_m), static_cast<A*>(part_d));
  beam_merge_kernel<T, CAP, kMergeBlock><<<static_cast<unsigned>(B), kMergeBlock, 0, stream>>>(
      logits, sb, sk, sv, bs, fin, eos, K, V, plan.parts, k, static_cast<const A*>(part_x), part_v,
      static_cast<const A*>(part_m), static_cast<const A*>(part_d), static_cast<A*>(lse), out_s, out_b, out_t);
}

template <typename T>
void launch_cap(const T* logits, int64_t sb, int64_t sk, int64_t sv, const float* bs, const bool* fin, int64_t eos,
                int64_t B, int64_t K, int64_t V, int64_t k, const BeamPlan& plan, void* part_x, int64_t* part_v,
                void* part_m, void* part_d, void* lse, float* out_s, int64_t* out_b, int64_t* out_t,
                cudaStream_t stream) {
#define S2S_BEAM_CAP(C)                                                                                       \
  case C:                                                                                                     \
    return launch_typed<T, C>(logits, sb, sk, sv, bs, fin, eos, B, K, V, k, plan, part_x, part_v, part_m,     \
                              part_d, lse, out_s, out_b, out_t, stream);
  switch (plan.cap) {
    S2S_BEAM_CAP(2)
    S2S_BEAM_CAP(4)
    S2S_BEAM_CAP(8)
    S2S_BEAM_CAP(16)
    S2S_BEAM_CAP(32)
    S2S_BEAM_CAP(64)
    S2S_BEAM_CAP(128)
    default: return;
  }
#undef S2S_BEAM_CAP
}

}  // namespace

const char* launch_beam_search_topk(int dtype, const void* logits, int64_t sb, int64_t sk, int64_t sv,
                                    const float* beam_scores, const bool* finished, int64_t eos_id, int64_t B,
                                    int64_t K, int64_t V, int64_t k, const BeamPlan& plan, void* part_x,
                                    int64_t* part_v, void* part_m, void* part_d, void* lse, float* out_scores,
                                    int64_t* out_beam, int64_t* out_token, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case 0:
      launch_cap(static_cast<const float*>(logits), sb, sk, sv, beam_scores, finished, eos_id, B, K, V, k, plan,
                 part_x, part_v, part_m, part_d, lse, out_scores, out_beam, out_token, stream);
      break;
    case 1:
      launch_cap(static_cast<const double*>(logits), sb, sk, sv, beam_scores, finished, eos_id, B, K, V, k, plan,
                 part_x, part_v, part_m, part_d, lse, out_scores, out_beam, out_token, stream);
      break;
    case 2:
      launch_cap(static_cast<const __half*>(logits), sb, sk, sv, beam_scores, finished, eos_id, B, K, V, k, plan,
                 part_x, part_v, part_m, part_d, lse, out_scores, out_beam, out_token, stream);
      break;
    case 3:
      launch_cap(static_cast<const __nv_bfloat16*>(logits), sb, sk, sv, beam_scores, finished, eos_id, B, K, V, k,
                 plan, part_x, part_v, part_m, part_d, lse, out_scores, out_beam, out_token, stream);
      break;
    default: return "beam_search_topk: unsupported dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

int device_sm_count(int device) {
  int sms = 0;
  return cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess ? sms : -1;
}

}  // namespace s2s_fused::cuda
