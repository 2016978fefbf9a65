// Large CPU buffers that are written once, right after allocation (gradients, RNN workspaces).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace s2s_fused::cpu {

// A freshly allocated multi-MB buffer costs one page fault per 4 KB page on first touch, which took longer than
// a whole CE backward pass (28 of 36 ms for 64 MB) and ~6 % of an LSTM layer's forward. Ask for transparent huge
// pages on its 2 MB-aligned interior (THP is usually in "madvise" mode), so the first write faults once per 2 MB.
// A hint only: errors are ignored.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() < (size_t(4) << 20)) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = end & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

inline at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

}  // namespace s2s_fused::cpu
