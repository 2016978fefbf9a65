// Which GEMM path the CPU RNN ops take, chosen on the machine they run on, and the packed-weight cache of the
// cells' packed path.
//
// Paths (config::CpuPath, set by S2S_FUSED_CPU_PATH): `packed` (our register-tiled micro-kernel over packed
// weights: the layers' whole-sequence loop, the cells' weight products; other GEMMs as `onednn`), `packed-units`
// (`packed`, with a layer forward's threads splitting the hidden units, not the batch rows), `onednn` (ATen's
// oneDNN matmul for fp32 GEMMs, ATen's BLAS below a minimum size) and `blas` (ATen's mm / addmm: MKL or OpenBLAS).
// Which is fastest depends on the CPU: on the AMD EPYC (Zen 4) machines of benchmarks/NOTES.md MKL takes a generic
// path and our kernel and oneDNN win; on Intel Sapphire Rapids, ATen's GEMMs (AVX-512 + AMX) beat our kernel. No
// heuristic holds on both, so `auto` (the default) measures: the first call of an op for a key (op, dtype, shape
// bucket, threads) runs it with every candidate path a few times, interleaved, keeps the fastest path for the key,
// and returns that path's result. Every path computes the same products up to fp32 summation order, so the choice
// moves speed, never numbers beyond the documented tolerances. Tuning runs only in real calls of the CPU kernels
// (torch.compile's tracing runs the ops' fake kernels, and CPU ops are never captured in a CUDA graph).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/StorageImpl.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "cpu/fork_safe_mutex.h"
#include "cpu/packed_gemm.h"

namespace s2s_fused::cpu {

using config::CpuPath;

inline const char* path_name(CpuPath p) { return config::kCpuPathNames[static_cast<int>(p)]; }

// The smallest power of two >= n (n >= 1): shape buckets, so a model's few shapes share a handful of keys.
inline int64_t bucket(int64_t n) {
  int64_t b = 1;
  while (b < n) b *= 2;
  return b;
}

// One key's choice, and the best time (microseconds) each candidate took while it was measured.
struct PathChoice {
  CpuPath path;
  std::vector<std::pair<CpuPath, double>> times_us;
};

// The choices made so far in this process, keyed by "op dtype shape threads"; s2s_fused/_cpu_path_cache.py loads
// the ones earlier processes made on this machine (_load_cpu_path_choices) and saves new ones at exit.
class PathChoices {
 public:
  std::optional<CpuPath> find(const std::string& key) {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    const auto it = choices_.find(key);
    if (it == choices_.end()) return std::nullopt;
    return it->second.path;
  }
  void record(const std::string& key, PathChoice c) {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    choices_[key] = std::move(c);
  }
  std::map<std::string, PathChoice> all() {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    return choices_;
  }
  void clear() {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    choices_.clear();
  }

 private:
  ForkSafeMutex mutex_{ForkSafeMutex::PathChoices};
  std::map<std::string, PathChoice> choices_;
};

inline PathChoices& path_choices() {
  static PathChoices c;
  return c;
}

// Microseconds on the calling thread's CPU-time clock, or on a steady wall clock.
inline double now_us(bool thread_cpu_time) {
  if (thread_cpu_time) {
    timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
  }
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs f(path) -> result with the path S2S_FUSED_CPU_PATH forces, or, under `auto`, the key's measured choice
// (measuring it on the first call). `candidates` (never empty) are the paths that differ for this call; one
// candidate is run without measuring. Measuring: one cold round over the candidates (first-call costs: a oneDNN
// primitive, the packed-weight cache, buffers not yet in the buffer cache), then timed rounds, interleaved so that
// load from other processes hits every candidate alike; each candidate's previous result is dropped before it runs
// again, so its buffers come back from the buffer cache instead of faulting in fresh memory in every round. Each
// candidate's best timed round counts (load only ever adds time), but one best is not trusted alone: a burst of
// load can slow every round of a short measurement (seen on a shared 2-core machine: 12-20 ms rounds of a 0.4 ms
// op, which fixed a slow path for the whole process). So rounds go on until every candidate's two best rounds
// agree within 10 % (at least 3 timed rounds), or 12 rounds, or, once the measurement has taken 300 ms, after 2
// timed rounds; when the cold round alone took that long, it decides (a long op's first-call costs are small
// beside it), so that measuring a long op costs about one call per candidate.
// Another candidate displaces the first one (the preferred order: packed, packed-units, onednn, blas) only when at
// least 5 % faster in its best and its second best round, so that noise does not flip a near tie. The choice is
// then final for the process: a key's calls all round alike, so results repeat bit for bit within a process.
template <class F>
auto run_with_path(const std::string& key, const std::vector<CpuPath>& candidates, F&& f) {
  const CpuPath forced = config::cpu_path();
  if (forced != CpuPath::Auto) return f(forced);
  if (candidates.size() == 1) return f(candidates[0]);
  // A choice is taken only while it is a candidate: one kept from another process (or made before a switch such
  // as S2S_FUSED_NO_PACKED changed) may name a path this call cannot take; the key is then measured again.
  if (const auto chosen = path_choices().find(key);
      chosen && std::find(candidates.begin(), candidates.end(), *chosen) != candidates.end()) {
    return f(*chosen);
  }
  using Result = decltype(f(candidates[0]));
  constexpr int kMaxRounds = 12;
  constexpr double kBudgetUs = 300e3;
  std::vector<std::optional<Result>> results(candidates.size());
  std::vector<double> best(candidates.size(), 1e300), second(candidates.size(), 1e300), cold(candidates.size());
  // One thread: the op runs on this thread alone, so its CPU time is the op's time without the slices other
  // processes took (on a shared machine at load 10, wall time varied 20x between calls of one op). More threads:
  // wall time, which is what the threads' teamwork costs.
  const bool thread_clock = at::get_num_threads() == 1;
  const double start = now_us(false);
  for (int round = 0; round <= kMaxRounds; ++round) {
    for (size_t i = 0; i < candidates.size(); ++i) {
      results[i].reset();
      const double t0 = now_us(thread_clock);
      results[i].emplace(f(candidates[i]));
      const double us = now_us(thread_clock) - t0;
      if (round == 0) {
        cold[i] = us;
        continue;
      }
      if (us < best[i]) {
        second[i] = best[i];
        best[i] = us;
      } else {
        second[i] = std::min(second[i], us);
      }
    }
    const double elapsed = now_us(false) - start;
    if (round == 0 && elapsed > kBudgetUs) {
      best = cold;
      break;
    }
    if (round >= 2 && elapsed > kBudgetUs) break;
    bool agree = true;
    for (size_t i = 0; i < candidates.size(); ++i) agree = agree && second[i] <= 1.1 * best[i];
    if (round >= 3 && agree) break;
  }
  // Displacing the first candidate takes both best rounds (when there were two), so that one lucky round does not
  // decide a near tie: the packed path and its unit split were 2-4 % apart on a shared 2-core VM, and the single
  // best round picked the slower one often enough to cost 8 % in a benchmark.
  const auto displaces_first = [&](size_t i) { return best[i] < 0.95 * best[0] && second[i] < 0.95 * second[0]; };
  size_t win = 0;
  PathChoice choice;
  for (size_t i = 0; i < candidates.size(); ++i) {
    choice.times_us.emplace_back(candidates[i], best[i]);
    if (win == 0 ? i > 0 && displaces_first(i) : best[i] < best[win]) win = i;
  }
  choice.path = candidates[win];
  path_choices().record(key, std::move(choice));
  return std::move(*results[win]);
}

// ------------------------------------------------------------------ packed weights, kept across calls
// A cell in a decode loop multiplies by the same weights every step; packing them (a pass over W) per call would
// cost as much as a small-batch product. So packed copies are kept, keyed on what identifies the weight's values:
// its storage (a weak reference: a freed weight's entry never matches a new tensor at the same address, and the
// entry holds no reference to the weight's memory), the view (data pointer, sizes, strides) and the version
// counter, which every in-place update through autograd's view of the tensor bumps (optimizer.step, `with
// torch.no_grad(): w.add_(...)`, load_state_dict's copy_). Writes through `.data` share the storage but not the
// version counter; to catch those, each entry also keeps a few sampled values of the weight and compares them on
// every hit. At most kMaxEntries copies and kMaxBytes are kept (least recently used go first), and entries of
// freed weights are dropped at the next lookup, so memory stays bounded whatever the caller does.
class PackedWeights {
 public:
  static constexpr size_t kMaxEntries = 16;
  static constexpr int64_t kMaxBytes = int64_t(256) << 20;
  static constexpr int kSamples = 16;

  struct Key {
    const void* data;
    int64_t K, N, sk, sn, version;
    int64_t nv, ps;  // the packed layout: a cell's plain W^T and a layer's gated W^T are two packings of one view
    bool operator==(const Key&) const = default;
  };

  // The packed copy of b (K x N, fp32) in `layout`, packing it with pack(b) on a miss. Inference tensors (no
  // version counter) are packed on every call and never kept.
  template <class Pack>
  at::Tensor get(const at::Tensor& b, const PackedLayout& layout, Pack&& pack) {
    if (b.is_inference()) return pack(b);
    const Key key{b.const_data_ptr(), b.size(0), b.size(1), b.stride(0), b.stride(1), b._version(),
                  layout.nv, layout.ps};
    const std::array<float, kSamples> samples = sample(b);
    const c10::StorageImpl* storage = b.storage().unsafeGetStorageImpl();
    {
      std::lock_guard<ForkSafeMutex> lock(mutex_);
      purge_dead();
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->storage._unsafe_get_target() == storage && it->key == key && !it->storage.expired() &&
            std::memcmp(it->samples.data(), samples.data(), sizeof(samples)) == 0) {
          entries_.splice(entries_.begin(), entries_, it);
          ++hits_;
          return entries_.front().packed;
        }
      }
    }
    at::Tensor packed = pack(b);
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    ++misses_;
    // An older packing of the same view (before an in-place update) is stale for good: drop it. (W and W^T, the
    // backward's and the forward's operands, are different views of one storage and both stay.)
    entries_.remove_if([&](const Entry& e) {
      return e.storage._unsafe_get_target() == storage && e.key.data == key.data && e.key.K == key.K &&
             e.key.N == key.N && e.key.sk == key.sk && e.key.sn == key.sn && e.key.nv == key.nv &&
             e.key.ps == key.ps;
    });
    entries_.push_front(Entry{b.storage().getWeakStorageImpl(), key, samples, packed});
    int64_t bytes = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      bytes += it->packed.nbytes();
      const bool keep = it == entries_.begin() || (entries_.size() <= kMaxEntries && bytes <= kMaxBytes);
      if (keep) {
        ++it;
      } else {
        bytes -= it->packed.nbytes();
        it = entries_.erase(it);
      }
    }
    return packed;
  }

  struct Stats {
    int64_t entries, bytes, hits, misses;
  };
  Stats stats() {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    purge_dead();
    int64_t bytes = 0;
    for (const Entry& e : entries_) bytes += e.packed.nbytes();
    return {static_cast<int64_t>(entries_.size()), bytes, hits_, misses_};
  }
  void clear() {
    std::lock_guard<ForkSafeMutex> lock(mutex_);
    entries_.clear();
    hits_ = misses_ = 0;
  }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    Key key;
    std::array<float, kSamples> samples;
    at::Tensor packed;
  };

  // kSamples values spread over b (the first and last included), in index order.
  static std::array<float, kSamples> sample(const at::Tensor& b) {
    std::array<float, kSamples> s{};
    const float* p = b.const_data_ptr<float>();
    const int64_t n = b.numel(), N = b.size(1);
    for (int i = 0; i < kSamples && n > 0; ++i) {
      const int64_t idx = (n - 1) * i / (kSamples - 1);
      s[i] = p[(idx / N) * b.stride(0) + (idx % N) * b.stride(1)];
    }
    return s;
  }
  void purge_dead() {
    entries_.remove_if([](const Entry& e) { return e.storage.expired(); });
  }

  ForkSafeMutex mutex_{ForkSafeMutex::PackedWeights};
  std::list<Entry> entries_;
  int64_t hits_ = 0, misses_ = 0;
};

inline PackedWeights& packed_weights() {
  static PackedWeights w;
  return w;
}

}  // namespace s2s_fused::cpu
