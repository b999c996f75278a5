// The CUDA that spectra's kernels (kernels/cuda/*.cu) use, in HIP-CPU's terms, so that the same C
// runs on the CPU. HIP-CPU runs a block's threads as fibers, one after another between barriers.
#include <hip/hip_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// HIP-CPU marks device code `simd` and `flatten` for GCC: several times the compile time, and
// nothing a test needs.
#undef __device__
#define __device__
#undef __global__
#define __global__
#undef __forceinline__
#define __forceinline__ inline

// CUDA's integer min and max, and its classification functions outside a namespace.
using std::isfinite;
using std::isnan;
using std::max;
using std::min;

namespace spectra_emulation {
template <typename To, typename From>
inline To bits_as(From x) {
    static_assert(sizeof(To) == sizeof(From));
    To y;
    std::memcpy(&y, &x, sizeof y);
    return y;
}

// Kernels run on HIP-CPU's own threads; std::exit there would wait for them at exit, so the
// process ends at once.
[[noreturn]] inline void unsupported(const char* what) {
    std::fprintf(stderr, "emulation: %s\n", what);
    std::fflush(stderr);
    std::_Exit(3);
}

// CUDA's warp is 32 threads; HIP-CPU's is 64, and its shuffles are barriers of the whole block, so
// the kernels' shuffles inside `if (threadIdx.x < 32)` would wait for threads that never come.
// Warp operations here pass control round the calling warp's threads only: fibers run one after
// another, so when control comes back every thread of the warp has reached the same point.
constexpr std::uint32_t warp = 32;

inline std::uint32_t thread_in_block() { return id(hip::detail::Fiber::this_fiber()); }

inline std::uint32_t warp_width() {
    const std::uint32_t threads = count(hip::detail::Tile::this_tile().dimensions());
    return std::min(warp, threads - thread_in_block() / warp * warp);
}

inline void warp_barrier() {
    const std::uint32_t width = warp_width();
    if (width == 1) return;
    // HIP-CPU runs a block's threads as fibers only once thread 0 has met a barrier; before that it
    // runs them one after another on one stack, where control cannot pass round a warp.
    if (!hip::detail::this_tile::has_barrier && thread_in_block() != 0)
        unsupported("a warp operation before thread 0 has met any barrier is not emulated");
    // Tells HIP-CPU that the block's threads are fibers that must each run to the end.
    hip::detail::this_tile::has_barrier = true;
    const std::uint32_t me = thread_in_block(), first = me / warp * warp;
    hip::detail::Fiber::yield(hip::detail::Tile::fibers()[first + (me - first + 1) % width]);
}

// Each thread's contribution to the warp operation under way, by thread index.
inline std::uint64_t* slots() {
    thread_local static std::uint64_t by_thread[1024];
    return by_thread;
}

inline void whole_warp(unsigned mask) {
    const std::uint32_t width = warp_width();
    const unsigned all = width == 32 ? 0xffffffffu : (1u << width) - 1u;
    // A full mask on a block's last, partial warp names lanes that do not exist: CUDA allows it.
    if (mask != all && mask != 0xffffffffu)
        unsupported("a warp operation with a partial lane mask is not emulated");
}

template <typename T>
inline T shuffle_down(unsigned mask, T value, unsigned delta) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t));
    whole_warp(mask);
    const std::uint32_t me = thread_in_block(), lane = me % warp;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof value);
    slots()[me] = bits;
    warp_barrier();
    T result = value;
    if (lane + delta < warp_width()) std::memcpy(&result, &slots()[me + delta], sizeof result);
    warp_barrier();
    return result;
}

inline unsigned match_any(unsigned mask, unsigned value) {
    whole_warp(mask);
    const std::uint32_t me = thread_in_block(), first = me / warp * warp;
    slots()[me] = value;
    warp_barrier();
    unsigned peers = 0;
    for (std::uint32_t lane = 0; lane < warp_width(); ++lane) {
        if (slots()[first + lane] == value) peers |= 1u << lane;
    }
    warp_barrier();
    return peers;
}
}  // namespace spectra_emulation

template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
    return spectra_emulation::shuffle_down(mask, value, delta);
}
inline unsigned __match_any_sync(unsigned mask, unsigned value) {
    return spectra_emulation::match_any(mask, value);
}

// Correctly rounded arithmetic: with -ffp-contract=off each is the one IEEE operation it names.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

inline float __int_as_float(int x) { return spectra_emulation::bits_as<float>(x); }
inline float __uint_as_float(unsigned x) { return spectra_emulation::bits_as<float>(x); }
inline unsigned __float_as_uint(float x) { return spectra_emulation::bits_as<unsigned>(x); }
