// CPU registration of the rnn_layer ops (one direction and both directions of a layer): the recurrence of
// csrc/rnn_recurrence.h on the CPU device of csrc/cpu/rnn_policy.h.
#include <torch/library.h>

#include "cpu/rnn_policy.h"
#include "rnn_layer_impl.h"

static_assert(s2s_fused::RnnDevice<s2s_fused::cpu::CpuRnnPolicy>);

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) { s2s_fused::register_rnn_layer_ops<s2s_fused::cpu::CpuRnnPolicy>(m); }
