#!/usr/bin/env bash
# What KVzap saves over KVzip: the time to read a long prompt and compress it to a ratio of it, for
# `Full` (no compression, the anchor), `KvZap` (a linear surrogate per layer, scoring each entry as it
# is written) and `KvZip` (the model re-reads the whole prompt to score it), on the same prompt and
# model, back to back, each run twice and the faster kept. Prints each time and its ratio to Full's.
#
#   scripts/kvzap-vs-kvzip.sh [MODEL.gguf] [PROMPT_TOKENS] [RATIO]
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
tokens="${2:-4000}"
ratio="${3:-0.25}"
[[ -s data/kv/eval.txt ]] || scripts/get-data.sh >/dev/null
surrogate=$(scripts/kvzap-surrogate.sh "$model")
cargo build --release --quiet --bin spectra
budget=$(python3 -c "import math; print(math.ceil($tokens * $ratio))")
declare -A policy=(
    [Full]='(type: "Full", cfg: ())'
    [KvZap]="(type: \"KvZap\", cfg: (surrogate: \"$surrogate\"))"
    [KvZip]='(type: "KvZip", cfg: ())'
)
declare -A best
for round in 1 2; do
    for name in Full KvZap KvZip; do
        line=$(target/release/spectra generate --model "$model" --prompt-file data/kv/eval.txt \
            --prompt-tokens "$tokens" --max-tokens 1 --ignore-eos --policy "${policy[$name]}" \
            --budget "$budget" 2>&1 >/dev/null | grep -o 'prompt [0-9]* tokens in [0-9.]*s')
        seconds=$(sed 's/.* in \([0-9.]*\)s/\1/' <<<"$line")
        if [[ -z "${best[$name]:-}" ]] || python3 -c "import sys; sys.exit(not $seconds < ${best[$name]})"; then
            best[$name]=$seconds
        fi
    done
done
echo "prompt of $tokens tokens, compressed to $budget entries per head ($model):"
for name in Full KvZap KvZip; do
    python3 -c "print(f'  {\"$name\":6} {${best[$name]}:7.2f}s  {${best[$name]} / ${best[Full]}:5.2f}x Full')"
done
