// Run-time choice among the copies of csrc/cpu/kernels/*.cpp that setup.py compiles once per CPU capability.
//
// Each kernel file defines, inside `namespace s2s_fused::cpu::CPU_CAPABILITY`, a `const <Table> <name>` of
// function pointers. S2S_CPU_KERNEL_TABLE(Table, name) declares those copies and defines `const Table& name()`
// returning the best one this processor runs. The capability is ATen's own choice (it honours the
// ATEN_CPU_CAPABILITY environment variable, which the tests use to run every copy against the reference).
#pragma once

#include <ATen/Version.h>

#include <string>

namespace s2s_fused::cpu {

enum class Capability { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

inline Capability runtime_capability() {
  static const Capability cap = [] {
    // ATen's exported answer is a name ("AVX512", "AVX2", "DEFAULT", ...); anything we did not compile falls back.
    const std::string name = at::get_cpu_capability();
#if defined(S2S_HAVE_CAPABILITY_AVX512)
    if (name == "AVX512") return Capability::AVX512;
#endif
#if defined(S2S_HAVE_CAPABILITY_AVX2)
    if (name == "AVX512" || name == "AVX2") return Capability::AVX2;
#endif
    return Capability::DEFAULT;
  }();
  return cap;
}

inline const char* capability_name(Capability c) {
  switch (c) {
    case Capability::AVX512: return "AVX512";
    case Capability::AVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

}  // namespace s2s_fused::cpu

#if defined(S2S_HAVE_CAPABILITY_AVX512)
#define S2S_IF_AVX512(...) __VA_ARGS__
#else
#define S2S_IF_AVX512(...)
#endif
#if defined(S2S_HAVE_CAPABILITY_AVX2)
#define S2S_IF_AVX2(...) __VA_ARGS__
#else
#define S2S_IF_AVX2(...)
#endif

#define S2S_CPU_KERNEL_TABLE(Table, name)                                                      \
  namespace s2s_fused::cpu {                                                                   \
  namespace DEFAULT { extern const Table name; }                                               \
  S2S_IF_AVX2(namespace AVX2 { extern const Table name; })                                     \
  S2S_IF_AVX512(namespace AVX512 { extern const Table name; })                                 \
  inline const Table& name##_for(Capability c) {                                               \
    switch (c) {                                                                               \
      S2S_IF_AVX512(case Capability::AVX512: return AVX512::name;)                             \
      S2S_IF_AVX2(case Capability::AVX2: return AVX2::name;)                                   \
      default: return DEFAULT::name;                                                           \
    }                                                                                          \
  }                                                                                            \
  inline const Table& name() { return name##_for(runtime_capability()); }                     \
  }
