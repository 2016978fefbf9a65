// Launchers of the CUDA masked cross-entropy kernels (csrc/cuda/cross_entropy.cu). Plain C++: included by the
// .cu (nvcc, no torch headers) and by the torch binding (csrc/cuda/cross_entropy_binding.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include "cross_entropy.h"

namespace s2s_fused::cuda {

// Both return the launch error (cudaSuccess when fine); nothing is launched for zero rows.
cudaError_t masked_ce_forward_launch(const cpu::CeForwardParams& p, cudaStream_t stream);
cudaError_t masked_ce_backward_launch(const cpu::CeBackwardParams& p, cudaStream_t stream);

}  // namespace s2s_fused::cuda
