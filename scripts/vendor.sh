#!/usr/bin/env bash
# Makes vendor/spectra-vendor.tar.xz: every crate the workspace needs to build and test with
# `--features cuda` offline (`cargo vendor`), for a machine with no package registry (the GPU check,
# scripts/gpu-check.sh). Crates that only other platforms use (Windows, wasm, macOS, ...: whatever
# `cargo tree` does not reach for the Linux targets below) keep their manifest, so that Cargo still
# resolves the lock file, but their code is replaced by empty files: they are never compiled on Linux,
# and the Windows import libraries alone would be most of the bundle. Also writes
# vendor/cargo-config.toml, the source replacement gpu-check.sh installs.
#
#   scripts/vendor.sh            the bundle (needs the crates in Cargo's cache or a registry)
#   scripts/vendor.sh --check    the bundle, then `cargo check --offline --features cuda` of a copy of
#                                the workspace against the unpacked bundle alone (an empty CARGO_HOME)
#   scripts/vendor.sh --prebuilt the bundle, then vendor/spectra-gpu-prebuilt.tar.xz: the release
#                                binaries gpu-check.sh runs (spectra, the GPU tests and benches), built
#                                here for a GPU machine without a Rust toolchain (x86-64 Linux, CUDA 13,
#                                compute capability CUDA_COMPUTE_CAP, default 90). Linked against empty
#                                stand-ins of libcuda, libnvrtc, libcurand, libcublas and libcublasLt
#                                (their CUDA 13 sonames), so the GPU machine's own libraries are loaded.
#
# Env: VENDOR_TARGETS (default "x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu"), the targets
# whose crates are kept whole.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

targets="${VENDOR_TARGETS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu}"
bundle="vendor/spectra-vendor.tar.xz"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p vendor

echo "vendor: cargo vendor into $work/crates"
cargo vendor --locked --versioned-dirs --quiet "$work/crates" >/dev/null

# Packages (name version) some Linux target reaches: every edge kind, every workspace member, the
# cuda feature on (features only add dependencies, so this covers the default build too).
for target in $targets; do
    cargo tree --locked --workspace --features cuda --target "$target" -e normal,build,dev \
        --prefix none --format '{p}'
done | sed -e 's/ (.*//' | sort -u >"$work/needed"

python3 - "$work/crates" "$work/needed" <<'EOF'
"""Replaces the code of vendored crates that no Linux target needs by empty files."""
import json, os, shutil, sys, tomllib

crates, needed_file = sys.argv[1], sys.argv[2]
needed = set()
for line in open(needed_file):
    parts = line.split()
    if len(parts) >= 2:
        needed.add((parts[0], parts[1].lstrip("v")))
stubbed = 0
for entry in sorted(os.listdir(crates)):
    path = os.path.join(crates, entry)
    manifest = os.path.join(path, "Cargo.toml")
    with open(manifest, "rb") as f:
        package = tomllib.load(f)["package"]
    if (package["name"], package["version"]) in needed:
        continue
    with open(manifest, "rb") as f:
        parsed = tomllib.load(f)
    # Every target file the manifest names (or Cargo would infer) must still exist.
    files = {"src/lib.rs"}
    if isinstance(parsed["package"].get("build"), str):
        files.add(parsed["package"]["build"])
    if "path" in parsed.get("lib", {}):
        files.add(parsed["lib"]["path"])
    for kind in ("bin", "example", "test", "bench"):
        for t in parsed.get(kind, []):
            if "path" in t:
                files.add(t["path"])
    checksum = json.load(open(os.path.join(path, ".cargo-checksum.json")))
    keep = open(manifest, "rb").read()
    shutil.rmtree(path)
    os.makedirs(path)
    open(manifest, "wb").write(keep)
    for name in files:
        target = os.path.join(path, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
    # No file checksums (the files changed); the package checksum still matches Cargo.lock.
    json.dump({"files": {}, "package": checksum.get("package")}, open(os.path.join(path, ".cargo-checksum.json"), "w"))
    stubbed += 1
print(f"vendor: {len(os.listdir(crates))} crates, {stubbed} stubbed (not built on Linux)")
EOF

echo "vendor: compressing"
tar -C "$work" -cf - crates | xz -T0 -9 >"$bundle.tmp"
mv "$bundle.tmp" "$bundle"
cat >vendor/cargo-config.toml <<'EOF'
# Cargo source replacement for an offline build from the unpacked vendor bundle. scripts/gpu-check.sh
# unpacks vendor/spectra-vendor.tar.xz into VENDOR_DIR and passes this file (with VENDOR_DIR filled in)
# to cargo with --config.
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "VENDOR_DIR"
EOF
echo "vendor: $bundle is $(du -h "$bundle" | cut -f1) ($(du -sh "$work/crates" | cut -f1) unpacked)"

# The nvcc of scripts/check-cuda.sh, for candle's kernels; false without one.
use_pip_cuda() {
    local toolkit="${XDG_CACHE_HOME:-$HOME/.cache}/spectra/cuda-13.0-pip"
    [ -x "$toolkit/nvidia/cu13/bin/nvcc" ] || return 1
    export CUDA_ROOT="$toolkit/nvidia/cu13" CUDA_PATH="$toolkit/nvidia/cu13"
    export PATH="$CUDA_ROOT/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
}

if [ "${1:-}" = "--check" ]; then
    # A copy of the workspace (tracked and unignored files), the bundle unpacked beside it, an empty
    # CARGO_HOME: only the bundle can supply crates.
    check="$work/check"
    mkdir -p "$check/src" "$check/home"
    git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$check/src/"
    tar -C "$check" -xJf "$bundle"
    sed "s|VENDOR_DIR|$check/crates|" vendor/cargo-config.toml >"$check/config.toml"
    if use_pip_cuda; then
        features="--features cuda"
    else
        echo "vendor: no nvcc (run scripts/check-cuda.sh once to install one); checking without cuda"
        features=""
    fi
    echo "vendor: cargo check --offline $features against the bundle alone"
    (cd "$check/src" && CARGO_HOME="$check/home" CARGO_TARGET_DIR="${VENDOR_CHECK_TARGET:-$root/target/vendor-check}" \
        cargo --config "$check/config.toml" check --offline --locked --workspace --all-targets $features)
    echo "vendor: offline check passed"
fi

if [ "${1:-}" = "--prebuilt" ]; then
    use_pip_cuda || { echo "vendor: --prebuilt needs nvcc: run scripts/check-cuda.sh once" >&2; exit 1; }
    # Stand-ins exporting every function cudarc declares for each library (each returns 100, CUDA's
    # "no device", should one ever run), under the sonames of CUDA 13; candle's kernels also link the
    # CUDA runtime, which the pip toolkit has.
    stubs="$work/stubs"
    mkdir -p "$stubs"
    cudarc="$(ls -d "$work"/crates/cudarc-*)"
    for entry in cuda:libcuda.so.1:driver nvrtc:libnvrtc.so.13:nvrtc curand:libcurand.so.10:curand \
        cublas:libcublas.so.13:cublas cublasLt:libcublasLt.so.13:cublaslt; do
        IFS=: read -r lib soname sys <<<"$entry"
        grep -oP 'pub unsafe fn \K\w+' "$cudarc/src/$sys/sys/mod.rs" | sort -u |
            sed 's/.*/int &(void) { return 100; }/' >"$stubs/$lib.c"
        cc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$lib.so" "$stubs/$lib.c"
    done
    ln -s "$CUDA_ROOT/lib/libcudart.so.13" "$stubs/libcudart.so"
    targets=(--bin spectra)
    for t in gpu_training gpu_kv; do
        [ -f "tests/$t.rs" ] && targets+=(--test "$t")
        [ -f "benches/$t.rs" ] && targets+=(--bench "$t")
    done
    echo "vendor: release build of ${targets[*]} (compute capability $CUDA_COMPUTE_CAP)"
    # The linker finds the stand-ins through LIBRARY_PATH, which (unlike RUSTFLAGS) leaves compiled
    # crates valid between runs.
    LIBRARY_PATH="$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}" CARGO_TARGET_DIR="${VENDOR_PREBUILT_TARGET:-$root/target/prebuilt}" \
        cargo build --locked --release --features cuda "${targets[@]}" \
        --message-format=json-render-diagnostics >"$work/artifacts.json"
    mkdir -p "$work/prebuilt"
    python3 - "$work/artifacts.json" "$work/prebuilt" <<'EOF'
import json, shutil, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    kind = m.get("target", {}).get("kind", [""])[0]
    if m.get("reason") == "compiler-artifact" and m.get("executable") and kind in ("bin", "test", "bench"):
        shutil.copy(m["executable"], f"{sys.argv[2]}/{kind}-{m['target']['name']}")
EOF
    strip --strip-debug "$work"/prebuilt/*
    ls -l "$work/prebuilt"
    tar -C "$work" -cf - prebuilt | xz -T0 -9 >vendor/spectra-gpu-prebuilt.tar.xz
    echo "vendor: vendor/spectra-gpu-prebuilt.tar.xz is $(du -h vendor/spectra-gpu-prebuilt.tar.xz | cut -f1)"
fi
