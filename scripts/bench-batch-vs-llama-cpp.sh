#!/usr/bin/env bash
# Many sequences at once, spectra's batching engine against llama.cpp's llama-batched-bench, side by
# side on this machine: the same GGUF (SmolLM2-135M-Instruct, Q4_1, from scripts/get-model.sh, or
# MODEL), the same thread count, each shape run by llama.cpp (flash attention off and on, both printed, the
# better taken) and then by `spectra bench`, back to back. Every ratio is of two numbers measured in
# this run.
#
#   scripts/bench-batch-vs-llama-cpp.sh [THREADS]        ROWS="1 2 3 4" picks the rows to run
#   MODEL=data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf scripts/bench-batch-vs-llama-cpp.sh
#
# Rows (prompt tokens × sequences, 64 generated each; prompts read first, then decoding, as
# llama-batched-bench does):
#   1. 8 × 512, full cache, spectra with an f32 and an f16 KV cache;
#   2. 4 × 4096, full cache and TriAttention at budget 1024, f16 KV (llama.cpp's cache is f16);
#   3. 8 × 8064, the same, TriAttention under a KV memory of two full 8K sequences;
#   4. that KV memory for the full cache too: spectra admits what fits (two at a time), llama.cpp
#      runs with -c sized to the same bytes, two sequences in parallel.
# spectra also sets each decoding pass against the bytes it must read (the weights once and every
# sequence's cache) at the memory read rate it measures in the same run.
# The whole script takes about an hour on 2 cores (rows 3 and 4 read 64K-token prompts).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp.sh

threads="${1:-$(nproc)}"
rows="${ROWS:-1 2 3 4}"
model="${MODEL:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[[ -s "$model" ]] || { echo "$model is missing: run scripts/get-model.sh first." >&2; exit 1; }
bin=$(llama_cpp_build llama-batched-bench)
[[ "${BUILD_ONLY:-}" == 1 ]] && exit 0
cargo build --release --quiet --bin spectra
text=data/kv/eval.txt
[[ -s "$text" && -s data/kv/calibration.txt ]] || scripts/get-data.sh >/dev/null
stats=$(scripts/tri-attention-stats.sh "$model")
export RAYON_NUM_THREADS="$threads"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
tri=(--policy "(type: \"TriAttention\", cfg: (stats: File(\"$stats\")))" --budget 1024)
# Two full 8K sequences' KV memory in spectra's f16 cache: layers × KV heads × (8064 + 64) rows × a
# key and a value of the head's width in f16, the geometry read from the GGUF's header.
two_full_8k=$(python3 - "$model" <<'PY'
import struct, sys
f = open(sys.argv[1], "rb")
def read(fmt):
    return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))
def string():
    return f.read(read("Q")[0]).decode()
scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
def value(kind):
    if kind == 8:
        return string()
    if kind == 9:
        inner, n = read("IQ")
        return [value(inner) for _ in range(n)]
    return read(scalar[kind])[0]
assert f.read(4) == b"GGUF", "not a GGUF file"
_, _, pairs = read("IQQ")
meta = {}
for _ in range(pairs):
    key = string()
    meta[key] = value(read("I")[0])
arch = meta["general.architecture"]
heads = meta[f"{arch}.attention.head_count"]
width = meta.get(f"{arch}.attention.key_length", meta[f"{arch}.embedding_length"] // heads)
kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
print(2 * meta[f"{arch}.block_count"] * kv_heads * 8128 * 2 * width * 2)
PY
)

# llama-batched-bench, flash attention off then on: one JSON line each, tagged with the row.
llama() { # row P N PL [CTX]
    local row=$1 p=$2 n=$3 pl=$4 ctx=${5:-$(($4 * ($2 + $3)))}
    for fa in off on; do
        "$bin/llama-batched-bench" -m "$model" -t "$threads" -c "$ctx" -b 2048 -ub 512 -npp "$p" \
            -ntg "$n" -npl "$pl" -fa "$fa" --output-format jsonl 2>/dev/null |
            grep '^{' | sed "s/^{/{\"row\": $row, \"engine\": \"llama.cpp\", \"fa\": \"$fa\", /" >>"$out/rows.jsonl"
    done
}
# spectra bench: one JSON line, tagged with the row and a label.
spectra() { # row label P N PL [options...]
    local row=$1 label=$2 p=$3 n=$4 pl=$5
    shift 5
    target/release/spectra bench --model "$model" --prompt-file "$text" --prompt-tokens "$p" \
        --gen "$n" --parallel "$pl" --json "$@" 2>/dev/null |
        sed "s/^{/{\"row\": $row, \"engine\": \"spectra\", \"label\": \"$label\", /" >>"$out/rows.jsonl"
}

for row in $rows; do
    case $row in
    1)
        llama 1 512 64 8
        spectra 1 "Full, f32 KV" 512 64 8
        spectra 1 "Full, f16 KV" 512 64 8 --kv-dtype f16
        ;;
    2)
        llama 2 4096 64 4
        spectra 2 "Full, f16 KV" 4096 64 4 --kv-dtype f16
        spectra 2 "TriAttention 1024, f16 KV" 4096 64 4 --kv-dtype f16 "${tri[@]}"
        ;;
    3)
        llama 3 8064 64 8
        spectra 3 "Full, f16 KV" 8064 64 8 --kv-dtype f16
        spectra 3 "TriAttention 1024, f16 KV, KV memory of 2 full" 8064 64 8 --kv-dtype f16 \
            --kv-memory "$two_full_8k" "${tri[@]}"
        ;;
    4)
        llama 4 8064 64 2 16256
        spectra 4 "Full, f16 KV, KV memory of 2 full" 8064 64 8 --kv-dtype f16 --kv-memory "$two_full_8k"
        ;;
    *) echo "no row $row (rows are 1 to 4)" >&2; exit 2 ;;
    esac
done

python3 - "$out/rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
shape = {1: "8 × 512", 2: "4 × 4096", 3: "8 × 8064", 4: "8 × 8064 in the KV memory of 2 full"}
print("| shape | llama.cpp prefill tok/s, fa off / on | llama.cpp decode tok/s, fa off / on | spectra | prefill tok/s | vs llama.cpp | decode tok/s | vs llama.cpp (its Full) | TTFT mean s | peak KV MiB | admitted | decode bytes/pass | of roofline |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in sorted({x["row"] for x in rows}):
    ll = {x["fa"]: x for x in rows if x["row"] == r and x["engine"] == "llama.cpp"}
    pp = max(x["speed_pp"] for x in ll.values())
    tg = max(x["speed_tg"] for x in ll.values())
    both = lambda k: " / ".join(f"{ll[fa][k]:.1f}" for fa in ("off", "on"))
    llama_label = shape[r] + (f" (llama.cpp: {ll['off']['pl']} in parallel)" if r == 4 else "")
    for s in (x for x in rows if x["row"] == r and x["engine"] == "spectra"):
        print(f"| {llama_label} | {both('speed_pp')} | {both('speed_tg')} | {s['label']} "
              f"| {s['prefill_tokens_per_s']:.1f} | {s['prefill_tokens_per_s'] / pp:.2f}x "
              f"| {s['decode_tokens_per_s']:.1f} | {s['decode_tokens_per_s'] / tg:.2f}x "
              f"| {s['ttft_s']:.2f} | {s['peak_kv_bytes'] / 2**20:.1f} | {s['admitted']} "
              f"| {s['decode_bytes_per_pass'] / 2**20:.0f} MiB | {100 * s['decode_roofline']:.0f}% |")
print()
rate = max(x.get("memory_read_gb_s", 0) for x in rows)
threads = next((x["n_threads"] for x in rows if x["engine"] == "llama.cpp"), "?")
print(f"memory read rate (measured by spectra bench): {rate:.1f} GB/s; {threads} threads")
PY
