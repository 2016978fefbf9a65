// The run-time choice of the per-capability RNN kernels (csrc/cpu/kernels/rnn_pointwise.cpp, packed_gemm.cpp),
// declared once for every CPU file that calls them.
#pragma once

#include "cpu/dispatch.h"
#include "cpu/packed_gemm.h"
#include "rnn_pointwise.h"

S2S_CPU_KERNEL_TABLE(RnnPointwiseKernels, rnn_pointwise_kernels)
S2S_CPU_KERNEL_TABLE(PackedGemmKernels, packed_gemm_kernels)
