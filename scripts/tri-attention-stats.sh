#!/usr/bin/env bash
# TriAttention's query statistics for a model (SmolLM2-135M by default), calibrated once
# (`spectra calibrate` on the first 100,000 characters of tiny Shakespeare, which the evaluation split
# does not contain); prints the path.
#
#   stats=$(scripts/tri-attention-stats.sh [MODEL.gguf])
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
case "$model" in
*SmolLM2-135M*) stats=data/kv/smollm2-135m-stats.safetensors ;;
*) stats="data/kv/$(basename "$model" .gguf)-stats.safetensors" ;;
esac
[[ -s data/kv/calibration.txt ]] || scripts/get-data.sh >/dev/null
if [[ ! -s "$stats" ]]; then
    echo "calibrating TriAttention for $model (spectra calibrate, once) ..." >&2
    cargo build --release --quiet --bin spectra
    target/release/spectra calibrate --model "$model" --text data/kv/calibration.txt --out "$stats" >/dev/null
fi
echo "$stats"
