// Checks for tests, off by default: they cost a pass over memory per call and guard invariants that only some
// machines' libraries would turn into wrong numbers.
#pragma once

#include <atomic>
#include <cstdlib>

namespace s2s_fused::cpu {

// Whether every CPU GEMM of the RNN ops first checks the memory oneDNN's AMX kernels read past its operand's rows
// (rnn_pointwise_cpu.h, check_gemm_operand_tail). Starts from S2S_FUSED_CHECK_GEMM_TAILS=1; the test session turns
// it on through s2s_fused._C._set_check_gemm_tails.
inline std::atomic<bool>& check_gemm_tails_flag() {
  static std::atomic<bool> flag{[] {
    const char* v = std::getenv("S2S_FUSED_CHECK_GEMM_TAILS");
    return v != nullptr && v[0] == '1';
  }()};
  return flag;
}

}  // namespace s2s_fused::cpu
