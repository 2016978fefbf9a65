// Beam-search top-k on CUDA: launch plan and launcher (no torch headers; see beam.cu). Nor CUDA headers: the
// binding includes this file and must compile against a CPU build of torch for the CI syntax check.
#pragma once

#include <algorithm>
#include <cstdint>

namespace s2s_fused::cuda {

// Largest k of the kernels (csrc/beam_topk.h kBeamFastMaxK); larger k takes the exact ATen path in the binding.
constexpr int64_t kBeamCudaMaxK = 64;

struct BeamPlan {
  int64_t parts = 1;   // P: vocabulary chunks per beam row (one block each)
  int64_t chunk = 1;   // elements per chunk
  int64_t cap = 2;     // entries kept per chunk and per thread: the power of two >= k + 1
};

// Split the vocabulary so that B*K*P blocks make about three waves (FasterTransformer's sizing), each chunk at
// least 1024 elements and P <= 64, so the merge kernel's candidate list stays small.
inline BeamPlan beam_plan(int64_t rows, int64_t V, int64_t k, int sm_count) {
  BeamPlan p;
  while (p.cap < k + 1) p.cap *= 2;
  const int64_t r = std::max<int64_t>(rows, 1);
  const int64_t want = std::max<int64_t>(1, (3 * static_cast<int64_t>(sm_count) + r - 1) / r);
  p.parts = std::max<int64_t>(1, std::min<int64_t>({want, (V + 1023) / 1024, 64}));
  p.chunk = (V + p.parts - 1) / p.parts;
  p.parts = (V + p.chunk - 1) / p.chunk;
  return p;
}

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16. Strides in elements. finished may be null. Workspace (acc =
// double for float64 logits, float otherwise): part_x (rows*P*cap acc), part_v (rows*P*cap int64), part_m and
// part_d (rows*P acc), lse (rows*2 acc). Outputs (B, k): scores float32, beam_index and token int64.
// Returns nullptr on success, else the CUDA error string of the launch. stream: a cudaStream_t.
const char* launch_beam_search_topk(int dtype, const void* logits, int64_t stride_b, int64_t stride_k,
                                    int64_t stride_v, const float* beam_scores, const bool* finished, int64_t eos_id,
                                    int64_t B, int64_t K, int64_t V, int64_t k, const BeamPlan& plan, void* part_x,
                                    int64_t* part_v, void* part_m, void* part_d, void* lse, float* out_scores,
                                    int64_t* out_beam, int64_t* out_token, void* stream);

// The number of SMs of a device (for beam_plan), or -1 with the error left for the caller's check.
int device_sm_count(int device);

}  // namespace s2s_fused::cuda
