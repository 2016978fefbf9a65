// The mutex of a process-wide cache (the buffer cache, the path choices, the packed weights) that fork() cannot
// leave locked in the child.
//
// A fork copies only the calling thread. If another thread held one of these locks at that moment (a DataLoader
// worker forked while a training thread runs an op), the child's copy stays locked forever and its first op hangs
// (seen: 3 of 40 forks while another thread ran GRU cell ops). pthread_atfork handlers take every such lock before
// the fork, in one fixed order, and release them after it in parent and child, so the child starts with unlocked
// mutexes and data structures no thread was midway through changing. The order is the nesting order of the caches
// (`Rank`, outermost first): freeing a packed weight under the packed-weight lock returns its block to the buffer
// cache, so the buffer cache's lock is taken last.
#pragma once

#include <algorithm>
#include <mutex>
#include <vector>
#if defined(__linux__)
#include <pthread.h>
#endif

namespace s2s_fused::cpu {

class ForkSafeMutex {
 public:
  enum Rank : int { PathChoices = 0, PackedWeights = 1, BufferCache = 2 };

  explicit ForkSafeMutex(Rank rank) : rank_(rank) {
    std::lock_guard<std::mutex> guard(registry_mutex());
    auto& r = registry();
    r.insert(std::upper_bound(r.begin(), r.end(), this,
                              [](const ForkSafeMutex* a, const ForkSafeMutex* b) { return a->rank_ < b->rank_; }),
             this);
    install_handlers();
  }
  ~ForkSafeMutex() {
    std::lock_guard<std::mutex> guard(registry_mutex());
    auto& r = registry();
    r.erase(std::remove(r.begin(), r.end(), this), r.end());
  }
  ForkSafeMutex(const ForkSafeMutex&) = delete;
  ForkSafeMutex& operator=(const ForkSafeMutex&) = delete;

  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }

 private:
  // Never destroyed: a cache's destructor at exit may still unregister.
  static std::vector<ForkSafeMutex*>& registry() {
    static auto* r = new std::vector<ForkSafeMutex*>();
    return *r;
  }
  static std::mutex& registry_mutex() {
    static auto* m = new std::mutex();
    return *m;
  }

  static void install_handlers() {
#if defined(__linux__)
    static const bool installed = [] {
      pthread_atfork(
          [] {
            registry_mutex().lock();
            for (ForkSafeMutex* m : registry()) m->mutex_.lock();
          },
          [] { release_all(); }, [] { release_all(); });
      return true;
    }();
    (void)installed;
#endif
  }
  static void release_all() {
    auto& r = registry();
    for (auto it = r.rbegin(); it != r.rend(); ++it) (*it)->mutex_.unlock();
    registry_mutex().unlock();
  }

  const Rank rank_;
  std::mutex mutex_;
};

}  // namespace s2s_fused::cpu
