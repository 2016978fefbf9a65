// The floating dtypes the compiled kernels take, for code without torch headers (CUDA kernels, CPU capability
// builds): torch's float32, float64, float16, bfloat16.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define S2S_HD __host__ __device__
#else
#define S2S_HD
#endif

namespace s2s_fused {

enum class Dtype : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

S2S_HD constexpr int64_t element_size(Dtype d) { return d == Dtype::Float64 ? 8 : d == Dtype::Float32 ? 4 : 2; }

}  // namespace s2s_fused
