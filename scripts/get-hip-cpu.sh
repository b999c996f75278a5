#!/usr/bin/env bash
# Puts HIP-CPU (github ROCm/HIP-CPU, header-only C++17, MIT; its last commit, e112c93) where the
# emulated kernel tests look for it (data/hip-cpu/), so that `cargo test` runs spectra's CUDA C on
# the CPU (tests/emulated_kernels.rs). Only its headers and the two libraries they include (libco,
# half) are kept. Needs g++ (C++17) to be of use; TBB (libtbb-dev) is optional.
#
# Env: HIP_CPU_GIT, a local clone of ROCm/HIP-CPU to take the commit from instead of downloading it.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=e112c935057434897bb12d9ab3910380a8bd5f58
dest=data/hip-cpu
parts=(LICENSE include src/include external/libco external/half)
if [ -s "$dest/include/hip/hip_runtime.h" ] && [ "$(cat "$dest/COMMIT" 2>/dev/null)" = "$commit" ]; then
    echo "ok: $dest is present (HIP-CPU ${commit:0:7})"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${HIP_CPU_GIT:-}" ]; then
    git --git-dir="$HIP_CPU_GIT" archive "$commit" "${parts[@]}" | tar -x -C "$tmp"
else
    command -v curl >/dev/null || { echo "missing: curl, needed to download HIP-CPU"; exit 1; }
    if ! curl -fsSL --max-time 120 "https://codeload.github.com/ROCm/HIP-CPU/tar.gz/$commit" \
        | tar -xz -C "$tmp" --strip-components=1; then
        echo "missing: HIP-CPU could not be downloaded from github.com/ROCm/HIP-CPU; with a clone, run"
        echo "  HIP_CPU_GIT=/path/to/HIP-CPU/.git scripts/get-hip-cpu.sh"
        exit 1
    fi
fi
rm -rf "$dest"
mkdir -p "$dest"
for part in "${parts[@]}"; do
    mkdir -p "$dest/$(dirname "$part")"
    cp -r "$tmp/$part" "$dest/$part"
done
echo "$commit" > "$dest/COMMIT"
echo "ok: HIP-CPU ${commit:0:7} in $dest ($(du -sh "$dest" | cut -f1))"
