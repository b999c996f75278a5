#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine with no GPU and no CUDA toolkit.
#
# candle's `cuda` feature runs nvcc at build time (candle-kernels compiles its .cu files) and cudarc asks
# nvcc for the CUDA version. PyPI's NVIDIA wheels carry a complete nvcc, so we install CUDA 13.0's into a
# cache folder. `cargo check` builds no binary, so nothing is linked against libcuda (which only a
# machine with the NVIDIA driver has). Pins: cudarc 0.19 knows CUDA up to 13.4, and nvcc, nvvm and crt must
# be one release (a newer nvvm emits PTX that an older ptxas refuses).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/spectra"
toolkit="$cache/cuda-13.0-pip"
if [ ! -x "$toolkit/nvidia/cu13/bin/nvcc" ]; then
    echo "installing nvcc 13.0 from PyPI into $toolkit"
    python3 -m pip install --quiet --disable-pip-version-check --target "$toolkit" \
        "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
        "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
fi

export CUDA_ROOT="$toolkit/nvidia/cu13" CUDA_PATH="$toolkit/nvidia/cu13"
export PATH="$CUDA_ROOT/bin:$PATH"
# No GPU to ask: compile the kernels for the H100/H200 generation.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# Kept outside the checkout so that a later run on the same machine does not recompile the kernels.
export CARGO_TARGET_DIR="${SPECTRA_CUDA_TARGET:-$cache/cuda-target}"

cargo check --workspace --all-targets --features cuda

# The kernels themselves are CUDA C that NVRTC compiles at run time; compile every module here, as NVRTC
# would see it (the prelude, then the module), so that a mistake in one is found without a GPU.
ptx=$(mktemp -d)
trap 'rm -rf "$ptx"' EXIT
for cu in kernels/cuda/*.cu; do
    name=$(basename "$cu" .cu)
    cat kernels/cuda/prelude.cuh "$cu" > "$ptx/$name.cu"
    nvcc --ptx -arch="compute_$CUDA_COMPUTE_CAP" -o "$ptx/$name.ptx" "$ptx/$name.cu"
done
echo "ok: the $(ls kernels/cuda/*.cu | wc -l) CUDA modules compile (nvcc --ptx, compute_$CUDA_COMPUTE_CAP)"
