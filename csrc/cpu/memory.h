// Large CPU buffers of the ops (gradients, RNN workspaces and states, packed weights): huge-page hints and a cache
// that hands freed blocks to the next call.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "config.h"
#include "cpu/fork_safe_mutex.h"

namespace s2s_fused::cpu {

// A freshly allocated multi-MB buffer costs one page fault per 4 KB page on first touch, which took longer than
// a whole CE backward pass (28 of 36 ms for 64 MB) and ~6 % of an LSTM layer's forward. Ask for transparent huge
// pages on its 2 MB-aligned interior (THP is usually in "madvise" mode), so the first write faults once per 2 MB.
// A hint only: errors are ignored.
inline void advise_huge_pages(void* data, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (nbytes < (size_t(4) << 20)) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + nbytes;
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = end & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

// Why a cache: every call of a cell's backward returns fresh weight gradients (3 MB each for a GRUCell at H = 512)
// and the layers allocate sequence-sized workspaces per call. glibc serves such sizes from mmap or trims them back
// to the system when freed, so each call pays one page fault and a page clear per 4 KB written: at B = 8 that was
// most of a GRUCell's backward (perf: clear_page_erms and exc_page_fault under the weight-gradient GEMM), the same
// cost torch.nn's cells pay. Blocks freed by our tensors go to a free list instead and are handed to the next
// request of about the same size (at most 1/4 larger), already mapped. The cache holds at most kCapBytes of free
// blocks (a freed block that does not fit is returned to the system) and only blocks of kMinBytes or more; smaller
// buffers come from the default allocator as before. S2S_FUSED_NO_BUFFER_CACHE=1 turns it off (every buffer from
// the system, as at::empty); s2s_fused.empty_cpu_cache() returns the free blocks; `python -m s2s_fused info`
// reports its state. Under S2S_FUSED_POISON_BUFFERS (the test session) every block is filled with 0xFF bytes (NaN
// in every floating dtype) when handed out, so a kernel that reads a buffer before writing it fails in tests,
// cached or not. Its lock is fork-safe (cpu/fork_safe_mutex.h).
class BufferCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t(128) << 10;
  static constexpr size_t kCapBytes = size_t(256) << 20;

  struct Stats {
    int64_t free_blocks, free_bytes, live_blocks, live_bytes, hits, misses;
  };

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || config::on(config::Switch::NoBufferCache)) {
      c10::DataPtr p = c10::GetDefaultCPUAllocator()->allocate(n);
      if (n > 0) poison(p.get(), n);
      return p;
    }
    const size_t size = round_up(n);
    void* block = nullptr;
    {
      std::lock_guard<ForkSafeMutex> lock(mutex_);
      const auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 4) {
        block = it->second;
        live_[block] = it->first;
        live_bytes_ += it->first;
        free_bytes_ -= it->first;
        free_.erase(it);
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (block == nullptr) {
      block = c10::alloc_cpu(size);  // ATen's aligned allocation (throws on failure), released by c10::free_cpu
      advise_huge_pages(block, size);
      std::lock_guard<ForkSafeMutex> lock(mutex_);
      live_[block] = size;
      live_bytes_ += size;
    }
    poison(block, n);
    return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Returns every free block to the system.
  void empty() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<ForkSafeMutex> lock(mutex_);
      blocks.swap(free_);
      free_bytes_ = 0;
    }
    for (const auto& [size, block] : blocks) c10::free_cpu(block);
  }

  Stats stats() {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    return {static_cast<int64_t>(free_.size()), static_cast<int64_t>(free_bytes_), static_cast<int64_t>(live_.size()),
            static_cast<int64_t>(live_bytes_), hits_, misses_};
  }

  static BufferCache& get() {
    // Never destroyed: tensors holding its blocks may outlive static destruction.
    static BufferCache* cache = new BufferCache();
    return *cache;
  }

 private:
  BufferCache() = default;

  // 64 KB granules below 4 MB, 2 MB (a huge page) above.
  static size_t round_up(size_t n) {
    const size_t g = n < (size_t(4) << 20) ? (size_t(64) << 10) : (size_t(2) << 20);
    return (n + g - 1) / g * g;
  }

  static void poison(void* p, size_t n) {
    if (config::on(config::Switch::PoisonBuffers)) std::memset(p, 0xff, n);
  }

  static void release(void* block) { get().give_back(block); }

  void give_back(void* block) {
    {
      std::lock_guard<ForkSafeMutex> lock(mutex_);
      const auto it = live_.find(block);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "s2s_fused: a block freed twice or not from the buffer cache");
      const size_t size = it->second;
      live_.erase(it);
      live_bytes_ -= size;
      if (free_bytes_ + size <= kCapBytes && !config::on(config::Switch::NoBufferCache)) {
        free_.emplace(size, block);
        free_bytes_ += size;
        return;
      }
    }
    c10::free_cpu(block);
  }

  ForkSafeMutex mutex_{ForkSafeMutex::BufferCache};
  std::multimap<size_t, void*> free_;        // size -> block
  std::unordered_map<void*, size_t> live_;   // blocks handed out -> size
  size_t free_bytes_ = 0;                    // sum of free_'s sizes
  size_t live_bytes_ = 0;                    // sum of live_'s sizes, kept so that stats() need not walk live_
  int64_t hits_ = 0, misses_ = 0;
};

// An uninitialized CPU tensor for an op's buffer or output: large ones from the buffer cache (above).
inline at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != c10::DeviceType::CPU) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &BufferCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()),
                                   options.memory_format_opt().value_or(at::MemoryFormat::Contiguous));
}

}  // namespace s2s_fused::cpu
