// A layer's whole per-step loop (recurrent GEMMs + pointwise launches) recorded once as a CUDA graph and replayed,
// so the T steps cost one graph launch instead of several kernel launches each. Opt-in: S2S_FUSED_CUDA_GRAPH=1
// (read at each call). NOT MEASURED AND NEVER RUN YET: written without a GPU; the GPU campaign (issue 7) measures
// it and decides whether it becomes the default.
//
// How a loop runs (StepGraphCache::run), per key = (shape: op, dtype, device, sizes, strides, flags, cuBLAS math
// flags; ptrs: the data pointers of every buffer the launches touch):
//  - a CUDA error is already pending in this thread (cudaPeekAtLastError: some earlier launch nobody checked):
//    run eagerly, so the loop's own launch checks report that error, and no failure of ours can be cleared
//    together with it (cudaGetLastError resets the thread's last error, whoever caused it);
//  - the current stream is capturing (the user's own graph capture): run eagerly, i.e. record into their graph;
//  - first time a shape is seen: run eagerly on the side stream (warm-up: cuBLAS handle/workspace for that
//    stream, lazy module loading of the kernels it picks), ordered after / before the current stream with events;
//  - a cached executable graph with the same pointers: cudaGraphLaunch on the current stream (no capture);
//  - otherwise: capture the loop on the side stream (thread-local capture mode, allocations routed to a private
//    memory pool of the caching allocator so a stray temporary cannot be handed out again while the graph lives),
//    then cudaGraphExecUpdate the cached executable graph of that shape (same topology, new pointers) or, when that
//    is refused (e.g. cuBLAS picked another kernel), instantiate a new one; then launch it.
//  - any failure while capturing or instantiating: its error is cleared (ours: none was pending before), the shape
//    is marked eager-only and the loop runs eagerly.
// The side stream is the cache's own, one per device, created non-blocking (cudaStreamCreateWithFlags with
// cudaStreamNonBlocking: no implicit synchronization with the legacy default stream, which a capture on a
// blocking stream would turn into an error for any thread launching there). A stream from torch's pool
// (getStreamFromPool) is handed out round-robin to every caller, so it could be the user's current stream or one
// another thread is capturing on.
// At most kMaxEntries shapes are cached, the least recently used evicted without any synchronization: a
// cudaDeviceSynchronize there would invalidate another thread's capture in cudaStreamCaptureModeGlobal (torch's
// default), and is not needed: an executable graph destroyed while in flight is freed when it completes (CUDA
// driver API, cuGraphExecDestroy), and a released private pool's blocks are never handed to other allocations,
// only returned to the device by cudaFree, which waits for the device; at::cuda::CUDAGraph::reset releases its
// graph the same way (its destroy calls under cudaStreamCaptureModeRelaxed, so another thread's global-mode
// capture does not forbid them).
// The cache is never destroyed (no CUDA calls at process exit).
#pragma once

#include <ATen/cuda/CUDAGraph.h>  // at::cuda::graph_pool_handle (declaration only; c10 headers underneath)
#include <c10/core/Allocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>  // CUDAStreamCaptureModeGuard
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace s2s_fused::cuda {

inline bool cuda_graph_enabled() {
  const char* on = std::getenv("S2S_FUSED_CUDA_GRAPH");
  return on != nullptr && on[0] == '1' && on[1] == '\0';
}

class StepGraphCache {
 public:
  static StepGraphCache& instance() {
    static StepGraphCache* cache = new StepGraphCache();  // leaked on purpose: no CUDA calls at exit
    return *cache;
  }

  void run(const std::vector<int64_t>& shape, const std::vector<int64_t>& ptrs, const std::function<void()>& fn) {
    if (cudaPeekAtLastError() != cudaSuccess) {  // someone else's error: leave it to fn's launch checks
      fn();
      return;
    }
    const c10::cuda::CUDAStream cur = c10::cuda::getCurrentCUDAStream();
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(cur.stream(), &status) != cudaSuccess) {
      (void)cudaGetLastError();  // e.g. the legacy stream while a blocking stream captures: ours, clear it
      fn();
      return;
    }
    if (status != cudaStreamCaptureStatusNone) {  // inside the caller's own capture: just record the launches
      fn();
      return;
    }
    const c10::DeviceIndex device = cur.device_index();
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = entry(shape, device);
    if (e.eager_only) {
      fn();
      return;
    }
    if (e.exec != nullptr && e.ptrs == ptrs) {
      launch(e, cur);
      return;
    }
    const c10::cuda::CUDAStream side = side_stream(device);
    if (!e.warmed) {
      run_on_side(cur, side, fn);
      e.warmed = true;
      return;
    }
    cudaGraph_t graph = capture(e, side, fn);
    if (graph == nullptr) {
      e.eager_only = true;
      fn();
      return;
    }
    instantiate_or_update(e, graph);
    (void)cudaGraphDestroy(graph);
    if (e.exec == nullptr) {
      e.eager_only = true;
      fn();
      return;
    }
    e.ptrs = ptrs;
    launch(e, cur);
  }

 private:
  static constexpr size_t kMaxEntries = 16;

  struct Entry {
    std::vector<int64_t> shape, ptrs;
    c10::DeviceIndex device = 0;
    bool warmed = false, eager_only = false;
    cudaGraphExec_t exec = nullptr;
    c10::MempoolId_t pool{0, 0};
    bool has_pool = false;
    int pool_refs = 0;  // beginAllocateToPool calls (each takes a reference; releasePool drops one)
  };

  StepGraphCache() = default;

  // The entry of `shape` on `device`, moved to the front (most recently used); evicts beyond kMaxEntries.
  Entry& entry(const std::vector<int64_t>& shape, c10::DeviceIndex device) {
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->device == device && it->shape == shape) {
        entries_.splice(entries_.begin(), entries_, it);
        return entries_.front();
      }
    }
    while (entries_.size() >= kMaxEntries) {
      release(entries_.back());
      entries_.pop_back();
    }
    entries_.emplace_front();
    entries_.front().shape = shape;
    entries_.front().device = device;
    return entries_.front();
  }

  // No synchronization (see the top of this file): a graph still in flight is freed when it completes, and its
  // pool's blocks stay out of other allocations until cudaFree, which waits for the device.
  static void release(Entry& e) {
    const c10::cuda::CUDAGuard guard(e.device);
    if (e.exec != nullptr) {
      const c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
      (void)cudaGraphExecDestroy(e.exec);  // fails only for an invalid handle; a reported earlier error stays
      e.exec = nullptr;
    }
    release_pool(e);
  }

  static void release_pool(Entry& e) {
    for (; e.has_pool && e.pool_refs > 0; --e.pool_refs) {
      c10::cuda::CUDACachingAllocator::releasePool(e.device, e.pool);
    }
    e.has_pool = false;
  }

  // The cache's own stream on `device`, created once and never destroyed (like the cache).
  c10::cuda::CUDAStream side_stream(c10::DeviceIndex device) {
    auto it = side_.find(device);
    if (it == side_.end()) {
      const c10::cuda::CUDAGuard guard(device);
      cudaStream_t s = nullptr;
      check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
      it = side_.emplace(device, c10::cuda::getStreamFromExternal(s, device)).first;
    }
    return it->second;
  }

  // Throws on failure, after clearing the error the failed call recorded (run() starts only with none pending).
  static void check(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return;
    (void)cudaGetLastError();
    TORCH_CHECK(false, "s2s_fused: ", what, " failed: ", cudaGetErrorString(err));
  }

  // `b` waits for the work queued so far on `a`.
  static void order(cudaStream_t a, cudaStream_t b) {
    cudaEvent_t ev = nullptr;
    check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
    const cudaError_t e1 = cudaEventRecord(ev, a);
    const cudaError_t e2 = e1 == cudaSuccess ? cudaStreamWaitEvent(b, ev, 0) : e1;
    (void)cudaEventDestroy(ev);  // released once the recorded work completes
    check(e2, "ordering the side stream");
  }

  static void run_on_side(const c10::cuda::CUDAStream& cur, const c10::cuda::CUDAStream& side,
                          const std::function<void()>& fn) {
    order(cur.stream(), side.stream());
    {
      const c10::cuda::CUDAStreamGuard guard(side);
      fn();
    }
    order(side.stream(), cur.stream());
  }

  // The loop recorded on the side stream; nullptr (errors cleared) when capture fails.
  static cudaGraph_t capture(Entry& e, const c10::cuda::CUDAStream& side, const std::function<void()>& fn) {
    if (!e.has_pool) {
      e.pool = at::cuda::graph_pool_handle();
      e.has_pool = true;
    }
    const cudaStream_t s = side.stream();
    c10::cuda::CUDACachingAllocator::beginAllocateToPool(e.device, e.pool,
                                                         [s](cudaStream_t x) { return x == s; });
    ++e.pool_refs;
    cudaGraph_t graph = nullptr;
    bool ok = false;
    {
      const c10::cuda::CUDAStreamGuard guard(side);
      if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
        try {
          fn();
          ok = true;
        } catch (...) {
          ok = false;
        }
        const cudaError_t end = cudaStreamEndCapture(s, &graph);  // also ends a capture the failure invalidated
        ok = ok && end == cudaSuccess && graph != nullptr;
      }
    }
    c10::cuda::CUDACachingAllocator::endAllocateToPool(e.device, e.pool);
    if (!ok) {
      if (graph != nullptr) (void)cudaGraphDestroy(graph);
      graph = nullptr;
      (void)cudaGetLastError();
      if (e.exec == nullptr) release_pool(e);
    }
    return graph;
  }

  static void instantiate_or_update(Entry& e, cudaGraph_t graph) {
    if (e.exec != nullptr) {
#if CUDART_VERSION >= 12000
      cudaGraphExecUpdateResultInfo info;
      const cudaError_t err = cudaGraphExecUpdate(e.exec, graph, &info);
#else
      cudaGraphNode_t node = nullptr;
      cudaGraphExecUpdateResult result;
      const cudaError_t err = cudaGraphExecUpdate(e.exec, graph, &node, &result);
#endif
      if (err == cudaSuccess) return;
      (void)cudaGetLastError();  // topology or kernel changed: instantiate afresh
      (void)cudaGraphExecDestroy(e.exec);
      e.exec = nullptr;
    }
#if CUDART_VERSION >= 12000
    const cudaError_t err = cudaGraphInstantiate(&e.exec, graph, 0ULL);
#else
    const cudaError_t err = cudaGraphInstantiate(&e.exec, graph, nullptr, nullptr, 0);
#endif
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      e.exec = nullptr;
    }
  }

  static void launch(const Entry& e, const c10::cuda::CUDAStream& cur) {
    check(cudaGraphLaunch(e.exec, cur.stream()), "cudaGraphLaunch of the recorded RNN step loop");
  }

  std::mutex mu_;
  std::list<Entry> entries_;
  std::unordered_map<c10::DeviceIndex, c10::cuda::CUDAStream> side_;
};

}  // namespace s2s_fused::cuda
