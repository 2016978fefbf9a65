// Launchers of the CUDA attention kernels, additive and dot (csrc/cuda/attention.cu). Plain C++: included by the .cu
// (nvcc, no torch headers) and by the torch binding (csrc/cuda/attention_binding.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include "attention.h"

namespace s2s_fused::cuda {

// Both return the launch error (cudaSuccess when fine); nothing is launched for zero rows.
cudaError_t attention_forward_launch(const cpu::AttnForwardParams& p, cudaStream_t stream);
cudaError_t attention_backward_launch(const cpu::AttnBackwardParams& p, cudaStream_t stream);

}  // namespace s2s_fused::cuda
