// Every S2S_FUSED_* switch the compiled library reads, in one place. All are read from the environment together,
// once, the first time any is asked for, with the Python side's rule (s2s_fused/config.py): "1" is on, unset, ""
// or "0" is off, and anything else is an error (a ValueError naming the variable), so a typo never leaves a switch
// silently off. s2s_fused._C.build_info()["switches"] shows them (name -> bool); s2s_fused._C._set_switch(name,
// on) changes one in a running process (A/B runs and tests of both paths) and returns the previous setting.
//
// One setting takes a name rather than 1/0: S2S_FUSED_CPU_PATH, which CPU GEMM path the RNN ops take (see
// csrc/cpu/cpu_path.h): "auto" (unset or empty: the fastest, measured on this machine) or one path by name
// (kCpuPathNames); any other value is a ValueError naming the variable. build_info()["cpu_path"] shows it,
// _C._set_cpu_path(name) changes it.
#pragma once

#include <c10/util/Exception.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace s2s_fused::config {

enum class Switch : int {
  NoPacked,         // CPU: the per-step loop with ATen GEMMs instead of the packed-weight sequence loop
  NoOnednn,         // CPU: fp32 GEMMs through ATen's BLAS instead of oneDNN
  NoPersistent,     // CUDA: the per-step loop instead of the persistent small-batch kernel
  CheckGemmTails,   // CPU, tests: check what oneDNN's AMX kernels read past each GEMM operand's rows
  NoBufferCache,    // CPU: large op buffers straight from the system allocator, never reused (csrc/cpu/memory.h)
  PoisonBuffers,    // CPU, tests: fill every large op buffer with NaN bytes before the op writes it
  Count,
};

inline constexpr std::array<const char*, static_cast<int>(Switch::Count)> kSwitchNames = {
    "S2S_FUSED_NO_PACKED",
    "S2S_FUSED_NO_ONEDNN",
    "S2S_FUSED_NO_PERSISTENT",
    "S2S_FUSED_CHECK_GEMM_TAILS",
    "S2S_FUSED_NO_BUFFER_CACHE",
    "S2S_FUSED_POISON_BUFFERS",
};

// The CPU GEMM paths of the RNN ops; Auto: chosen per op and shape by measurement (csrc/cpu/cpu_path.h).
// PackedUnits: Packed, with a layer forward's threads splitting the hidden units instead of the batch rows.
enum class CpuPath : int { Auto, Packed, PackedUnits, Onednn, Blas, Count };
inline constexpr std::array<const char*, static_cast<int>(CpuPath::Count)> kCpuPathNames = {
    "auto", "packed", "packed-units", "onednn", "blas"};
// The names, for error messages ("auto, packed, ... or blas"): with "auto", or only the paths a choice can be.
inline std::string cpu_path_list(bool with_auto) {
  std::string s;
  for (size_t i = with_auto ? 0 : static_cast<size_t>(CpuPath::Auto) + 1; i < kCpuPathNames.size(); ++i) {
    if (!s.empty()) s += i + 1 == kCpuPathNames.size() ? " or " : ", ";
    s += kCpuPathNames[i];
  }
  return s;
}
inline constexpr const char* kCpuPathVariable = "S2S_FUSED_CPU_PATH";

// The path of that name; CpuPath::Count when there is none.
inline CpuPath find_cpu_path(const char* name) {
  for (size_t i = 0; i < kCpuPathNames.size(); ++i) {
    if (std::strcmp(kCpuPathNames[i], name) == 0) return static_cast<CpuPath>(i);
  }
  return CpuPath::Count;
}

struct Switches {
  std::atomic<bool> value[static_cast<int>(Switch::Count)];
  std::atomic<int> cpu_path;
  Switches() {
    for (size_t i = 0; i < kSwitchNames.size(); ++i) value[i].store(parse(kSwitchNames[i]));
    cpu_path.store(static_cast<int>(parse_cpu_path()));
  }

  static CpuPath parse_cpu_path() {
    const char* s = std::getenv(kCpuPathVariable);
    if (s == nullptr || std::strcmp(s, "") == 0) return CpuPath::Auto;
    const CpuPath p = find_cpu_path(s);
    TORCH_CHECK_VALUE(p != CpuPath::Count, kCpuPathVariable,
                      ": expected ", cpu_path_list(true), " (or unset: auto), got '", s, "'");
    return p;
  }

  static bool parse(const char* name) {
    const char* s = std::getenv(name);
    if (s == nullptr || std::strcmp(s, "") == 0 || std::strcmp(s, "0") == 0) return false;
    TORCH_CHECK_VALUE(std::strcmp(s, "1") == 0, name, ": expected 1 (on), 0 or unset (off), got '", s, "'");
    return true;
  }
};

// The switches, read from the environment on the first call; a call that throws (a bad value) leaves them unread,
// so every later call throws too.
inline Switches& switches() {
  static Switches s;
  return s;
}

inline bool on(Switch s) { return switches().value[static_cast<int>(s)].load(std::memory_order_relaxed); }

// Sets a switch, returns its previous value.
inline bool set(Switch s, bool value) { return switches().value[static_cast<int>(s)].exchange(value); }

inline CpuPath cpu_path() { return static_cast<CpuPath>(switches().cpu_path.load(std::memory_order_relaxed)); }

// Sets the CPU path, returns the previous one.
inline CpuPath set_cpu_path(CpuPath p) {
  return static_cast<CpuPath>(switches().cpu_path.exchange(static_cast<int>(p)));
}

// The switch of that environment variable name; Switch::Count when there is none.
inline Switch find(const char* name) {
  for (size_t i = 0; i < kSwitchNames.size(); ++i) {
    if (std::strcmp(kSwitchNames[i], name) == 0) return static_cast<Switch>(i);
  }
  return Switch::Count;
}

}  // namespace s2s_fused::config
