#!/usr/bin/env bash
# KVzap's surrogate for a model (Qwen2.5-Coder-0.5B-Instruct by default), fitted once (`spectra
# fit-kvzap` on tiny Shakespeare's calibration part and requests' source and changelog, 20,000 tokens
# of each, none of it evaluation text); prints the path. The fit's held-out figures go to
# <surrogate>.txt.
#
#   surrogate=$(scripts/kvzap-surrogate.sh [MODEL.gguf])
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
surrogate="data/kv/$(basename "$model" .gguf)-kvzap.safetensors"
[[ -s data/kv/calibration.txt ]] || scripts/get-data.sh >/dev/null
[[ -s data/kv/kvzap/code.txt ]] || scripts/get-kvzap-text.sh >/dev/null
if [[ ! -s "$surrogate" ]]; then
    echo "fitting KVzap's surrogate for $model (spectra fit-kvzap, once) ..." >&2
    cargo build --release --quiet --bin spectra
    target/release/spectra fit-kvzap --model "$model" --out "$surrogate" --max-tokens 60000 \
        --text data/kv/calibration.txt --text data/kv/kvzap/code.txt --text data/kv/kvzap/history.txt \
        > "${surrogate%.safetensors}.txt"
fi
echo "$surrogate"
