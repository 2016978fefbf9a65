// CUDA registration of the rnn_layer ops (one direction and both directions of a layer): the recurrence of
// csrc/rnn_recurrence.h on the CUDA device of csrc/cuda/rnn_policy.h (per step one cuBLAS GEMM and one pointwise
// launch for all directions; the persistent kernel per direction for small batch), every launch on the current
// stream under a device guard. Variable lengths are a (T, B) mask on the device, so no step needs a host sync.
#include <torch/library.h>

#include "cuda/rnn_policy.h"
#include "rnn_layer_impl.h"

static_assert(s2s_fused::RnnDevice<s2s_fused::cuda::CudaRnnPolicy>);

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) { s2s_fused::register_rnn_layer_ops<s2s_fused::cuda::CudaRnnPolicy>(m); }
