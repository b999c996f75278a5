#!/usr/bin/env bash
# TriAttention's query statistics for SmolLM2-135M, calibrated once (`spectra calibrate` on the first
# 100,000 characters of tiny Shakespeare, which the evaluation split does not contain); prints the path.
#
#   stats=$(scripts/tri-attention-stats.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

model=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
stats=data/kv/smollm2-135m-stats.safetensors
[[ -s data/kv/calibration.txt ]] || scripts/get-data.sh >/dev/null
if [[ ! -s "$stats" ]]; then
    echo "calibrating TriAttention (spectra calibrate, once) ..." >&2
    cargo build --release --quiet --bin spectra
    target/release/spectra calibrate --model "$model" --text data/kv/calibration.txt --out "$stats" >/dev/null
fi
echo "$stats"
