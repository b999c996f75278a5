// Runs the kernels of the module compiled in front of it, one launch per process, for
// tests/emulated/mod.rs. Request on standard input, little-endian: the kernel's name (u32 length,
// bytes), blocks (u32), threads per block (u32), the argument count (u32), then each argument as a
// u64 byte count and its bytes: a buffer's contents for a pointer parameter, the value for any
// other. Reply on standard output: every buffer after the launch, in argument order, each as a u64
// byte count and its bytes. A request that does not fit the kernel's signature is refused on
// standard error with exit status 2.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace spectra_emulation {
[[noreturn]] inline void refuse(const std::string& why) {
    std::fprintf(stderr, "emulation: %s\n", why.c_str());
    std::fflush(stderr);
    std::_Exit(2);
}

inline void read_exactly(void* into, std::size_t bytes) {
    if (bytes != 0 && std::fread(into, 1, bytes, stdin) != bytes) refuse("the request ended early");
}

template <typename T>
inline T read_value() {
    T value;
    read_exactly(&value, sizeof value);
    return value;
}

// Bytes written past either end of a buffer land in these and are reported.
constexpr std::size_t guard_bytes = 256;
constexpr unsigned char guard_value = 0xa5;

struct Argument {
    std::vector<unsigned char> bytes;  // a buffer: guard, contents, guard
    bool buffer = false;

    unsigned char* contents() { return bytes.data() + guard_bytes; }
    std::size_t size() const { return bytes.size() - 2 * guard_bytes; }
};

struct Request {
    std::string kernel;
    std::uint32_t blocks = 0, threads = 0;
    std::vector<std::vector<unsigned char>> raw;
    std::vector<Argument> arguments;

    template <typename P>
    P argument(std::size_t i) {
        std::vector<unsigned char>& given = raw[i];
        Argument& a = arguments[i];
        if constexpr (std::is_pointer_v<P>) {
            a.buffer = true;
            a.bytes.assign(2 * guard_bytes + given.size(), guard_value);
            std::memcpy(a.contents(), given.data(), given.size());
            if (reinterpret_cast<std::uintptr_t>(a.contents()) % alignof(std::max_align_t) != 0)
                refuse("a buffer is misaligned");
            return reinterpret_cast<P>(a.contents());
        } else {
            if (given.size() != sizeof(P))
                refuse(kernel + ": argument " + std::to_string(i) + " is a " +
                       std::to_string(sizeof(P)) + "-byte value, the request gives " +
                       std::to_string(given.size()) + " bytes");
            P value;
            std::memcpy(&value, given.data(), sizeof value);
            return value;
        }
    }
};

template <typename... A, std::size_t... I>
void launch_unpacked(void (*kernel)(A...), Request& r, std::index_sequence<I...>) {
    // Braced initialisation evaluates the arguments in order.
    std::tuple<A...> args{r.template argument<A>(I)...};
    hipLaunchKernelGGL(kernel, dim3(r.blocks), dim3(r.threads), 0, nullptr, std::get<I>(args)...);
    if (hipDeviceSynchronize() != hipSuccess) refuse(r.kernel + ": the launch failed");
}

using Launcher = std::function<void(Request&)>;

template <typename... A>
Launcher launcher(void (*kernel)(A...)) {
    return [kernel](Request& r) {
        if (r.raw.size() != sizeof...(A))
            refuse(r.kernel + " takes " + std::to_string(sizeof...(A)) + " arguments, the request gives " +
                   std::to_string(r.raw.size()));
        launch_unpacked(kernel, r, std::index_sequence_for<A...>{});
    };
}

inline int serve(const std::map<std::string, Launcher>& kernels) {
    Request r;
    r.kernel.resize(read_value<std::uint32_t>());
    read_exactly(r.kernel.data(), r.kernel.size());
    r.blocks = read_value<std::uint32_t>();
    r.threads = read_value<std::uint32_t>();
    r.raw.resize(read_value<std::uint32_t>());
    for (auto& bytes : r.raw) {
        bytes.resize(read_value<std::uint64_t>());
        read_exactly(bytes.data(), bytes.size());
    }
    r.arguments.resize(r.raw.size());
    const auto found = kernels.find(r.kernel);
    if (found == kernels.end()) refuse("the module has no kernel " + r.kernel);
    if (r.blocks == 0 || r.threads == 0 || r.threads > 1024)
        refuse(r.kernel + ": " + std::to_string(r.blocks) + " blocks of " + std::to_string(r.threads) +
               " threads cannot be launched");
    found->second(r);
    for (std::size_t i = 0; i < r.arguments.size(); ++i) {
        Argument& a = r.arguments[i];
        if (!a.buffer) continue;
        for (std::size_t b = 0; b < guard_bytes; ++b) {
            if (a.bytes[b] != guard_value || a.bytes[guard_bytes + a.size() + b] != guard_value)
                refuse(r.kernel + ": argument " + std::to_string(i) + " was written outside its " +
                       std::to_string(a.size()) + " bytes");
        }
        const std::uint64_t size = a.size();
        std::fwrite(&size, sizeof size, 1, stdout);
        std::fwrite(a.contents(), 1, a.size(), stdout);
    }
    return std::fflush(stdout) == 0 ? 0 : 2;
}
}  // namespace spectra_emulation
