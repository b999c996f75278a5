#!/usr/bin/env bash
# The GPU check, in one command: on a machine with an NVIDIA GPU and CUDA 12.x or 13.x (nvcc) but no
# package registry, builds spectra with `--features cuda` in release offline from the vendored crates
# (vendor/spectra-vendor.tar.xz, made by scripts/vendor.sh), runs the GPU tests (tests/gpu_training.rs,
# tests/gpu_kv.rs: every plugin's GPU result against its CPU result), the GPU benchmarks
# (benches/gpu_training.rs, benches/gpu_kv.rs) and, when the SmolLM2 model and the config are there,
# `spectra kv experiments/kv_decode_gpu.ron`. Writes a summary table and one full log per phase into
# the folder given as $1 (default gpu-check-out/; at most 8 files), prints the elapsed time of every
# phase, and stops each phase in time for the whole to end within 8 minutes.
#
# Without a Rust toolchain on the machine (cargo not on PATH) it runs the binaries that
# `scripts/vendor.sh --prebuilt` built and packed into vendor/spectra-gpu-prebuilt.tar.xz instead
# (CUDA 13, x86-64 Linux only).
#
# Env: CUDA_COMPUTE_CAP (default: read from nvidia-smi, e.g. 90 for an H100/H200).
#
# Through a tool that copies the working tree and runs one command, carry the bundles (vendor/ is
# ignored by git): scripts/gpu-check.sh "$OUT" with carry ["vendor/spectra-vendor.tar.xz",
# "vendor/cargo-config.toml", "vendor/spectra-gpu-prebuilt.tar.xz"] (11 + 23 MiB). Bundles are
# unpacked under target/gpu-check/, never into vendor/.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
out="${1:-gpu-check-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
summary="$out/summary.md"
started=$(date +%s)
# The whole check ends by then; a phase gets at most what is left of it.
deadline=$((started + 470))
rows=()

elapsed() { echo $(($(date +%s) - $1)); }

# phase NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in $out/NAME.log, at most
# LIMIT_SECONDS and never past the deadline; records status and time.
phase() {
    local name="$1" limit="$2"
    shift 2
    local left=$((deadline - $(date +%s)))
    if [ "$left" -lt 10 ]; then
        rows+=("| $name | skipped: no time left | 0 | |")
        echo "== $name: skipped, no time left"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    echo "== $name (limit ${limit}s)"
    local t0 status
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    status=$?
    local took
    took=$(elapsed "$t0")
    local word="ok"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        word="TIMEOUT after ${limit}s"
    elif [ "$status" -ne 0 ]; then
        word="FAILED (exit $status)"
    fi
    rows+=("| $name | $word | $took | $name.log |")
    echo "   $name: $word in ${took}s"
    tail -n 5 "$out/$name.log" | sed 's/^/   | /'
    return "$status"
}

skip() {
    rows+=("| $1 | skipped: $2 | 0 | |")
    echo "== $1: skipped ($2)"
}

finish() {
    {
        echo "# spectra GPU check"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(elapsed "$started") s in all"
        echo
        echo "| phase | result | seconds | log |"
        echo "|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
        for bench in bench-gpu_training bench-gpu_kv; do
            if [ -s "$out/$bench.log" ]; then
                echo
                echo "## $bench"
                grep -E '^(\||#|[A-Z][a-z].*: )' "$out/$bench.log" || true
            fi
        done
    } >"$summary"
    echo
    cat "$summary"
}
trap finish EXIT

# --- setup: the GPU, CUDA, the toolchain or the prebuilt binaries --------------------------------------
setup() {
    set -e
    echo "machine: $(uname -srm)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
    if command -v nvcc >/dev/null; then
        nvcc --version | tail -n 2
        CUDA_ROOT="${CUDA_ROOT:-$(dirname "$(dirname "$(command -v nvcc)")")}"
    fi
    echo "CUDA_ROOT=${CUDA_ROOT:-unset}"
    echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    if [ "$mode" = build ]; then
        cargo --version
        rustc --version
        rm -rf "$vendor_dir"
        unpack vendor/spectra-vendor.tar.xz
        sed "s|VENDOR_DIR|$vendor_dir|" vendor/cargo-config.toml >"$cargo_config"
        echo "vendored crates: $(ls "$vendor_dir" | wc -l) in $vendor_dir"
    else
        rm -rf "$prebuilt_dir"
        unpack vendor/spectra-gpu-prebuilt.tar.xz
        ls -l "$prebuilt_dir"
    fi
}

# Unpacks a bundle into $unpacked (with Python's lzma where tar has no xz).
unpack() {
    mkdir -p "$unpacked"
    tar -C "$unpacked" -xJf "$1" 2>/dev/null ||
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$unpacked"
}

# One cargo invocation for all targets (arguments: the target selection), so dependencies are built
# once; the JSON messages on stdout name each executable.
build() {
    set -e
    cargo --version
    cargo --config "$cargo_config" build --offline --locked --release --features cuda "$@" \
        --message-format=json-render-diagnostics
}

if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')"
    export CUDA_COMPUTE_CAP="${cap:-90}"
fi
if command -v nvcc >/dev/null; then
    export CUDA_ROOT="${CUDA_ROOT:-$(dirname "$(dirname "$(command -v nvcc)")")}"
    export CUDA_PATH="${CUDA_PATH:-$CUDA_ROOT}"
    export LD_LIBRARY_PATH="$CUDA_ROOT/lib64:$CUDA_ROOT/lib:${LD_LIBRARY_PATH:-}"
fi
# cuBLAS, cuRAND and NVRTC of the CUDA installation, or of the Python packages that carry them.
for lib in libcublas.so libcurand.so libnvrtc.so; do
    if ! ldconfig -p 2>/dev/null | grep -q "$lib" && ! ls ${CUDA_ROOT:-/nonexistent}/lib*/"$lib"* >/dev/null 2>&1; then
        dir="$(find /usr/local /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || echo /nonexistent)" \
            -maxdepth 6 -name "$lib*" -print -quit 2>/dev/null | xargs -r dirname)"
        [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir:$LD_LIBRARY_PATH"
    fi
done
unpacked="$root/target/gpu-check"
vendor_dir="$unpacked/crates"
cargo_config="$unpacked/cargo-config.toml"
prebuilt_dir="$unpacked/prebuilt"
if command -v cargo >/dev/null && [ -f vendor/spectra-vendor.tar.xz ]; then
    mode=build
elif [ -f vendor/spectra-gpu-prebuilt.tar.xz ]; then
    mode=prebuilt
else
    echo "gpu-check: need cargo and vendor/spectra-vendor.tar.xz (scripts/vendor.sh), or" \
        "vendor/spectra-gpu-prebuilt.tar.xz (scripts/vendor.sh --prebuilt), carried along (see the header)" >&2
    rows+=("| setup | FAILED: neither cargo with the vendor bundle nor prebuilt binaries | 0 | |")
    exit 1
fi
export mode unpacked vendor_dir cargo_config prebuilt_dir out
export -f setup build unpack
phase setup 60 bash -c setup || exit 1

# --- build -----------------------------------------------------------------------------------------------
# Paths of the binaries to run, by role.
declare -A binary
targets=(--bin spectra)
for t in gpu_training gpu_kv; do
    [ -f "tests/$t.rs" ] && targets+=(--test "$t")
    [ -f "benches/$t.rs" ] && targets+=(--bench "$t")
done
artifacts="$root/target/gpu-check-artifacts.json"
if [ "$mode" = build ]; then
    mkdir -p target
    if phase build 330 bash -c 'build "$@" >"$0"' "$artifacts" "${targets[@]}"; then
        while IFS=$'\t' read -r role path; do
            binary[$role]="$path"
        done < <(python3 - "$artifacts" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        kind = t["kind"][0]
        print(f"{kind}-{t['name']}\t{m['executable']}")
EOF
        )
    fi
else
    for f in "$prebuilt_dir"/*; do
        binary[$(basename "$f")]="$f"
    done
fi

# --- tests, benches, the decode run ------------------------------------------------------------------------
for t in gpu_training gpu_kv; do
    if [ -n "${binary[test-$t]:-}" ]; then
        phase "test-$t" 120 "${binary[test-$t]}" --test-threads 1
    else
        skip "test-$t" "not built (no tests/$t.rs, or the build failed)"
    fi
done
for b in gpu_training gpu_kv; do
    if [ -n "${binary[bench-$b]:-}" ]; then
        phase "bench-$b" 150 "${binary[bench-$b]}" --bench
    else
        skip "bench-$b" "not built (no benches/$b.rs, or the build failed)"
    fi
done
model="data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
config="experiments/kv_decode_gpu.ron"
if [ ! -f "$model" ]; then
    skip kv-decode "$model is missing (scripts/get-model.sh)"
elif [ ! -f "$config" ]; then
    skip kv-decode "$config is missing"
elif [ -z "${binary[bin-spectra]:-}" ]; then
    skip kv-decode "the spectra binary was not built"
else
    phase kv-decode 120 "${binary[bin-spectra]}" kv "$config"
fi
