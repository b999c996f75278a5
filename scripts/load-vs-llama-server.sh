#!/usr/bin/env bash
# `spectra serve` against llama.cpp's `llama-server` under the same load, side by side on this
# machine: the same GGUF (SmolLM2-135M-Instruct, Q4_1, from scripts/get-model.sh), the same thread
# count, the same KV memory (llama-server's f16 cache of `-np N -c C`, no unified cache, and spectra's
# f16 cache under `--kv-memory` of the same bytes), the same prompts (cut to length by llama-server's
# tokenizer, which is spectra's), one server at a time, back to back. scripts/load-client.py sends
# every chat request streamed, greedy, 128 tokens each (`ignore_eos`), and prints generated tokens/s
# over the whole run, time to first token and inter-token latency (p50, p99), errors, the server's
# peak RSS and the most requests it ran at once. llama-server runs with flash attention off and on
# (both printed, the better taken); its prompt cache in RAM is off, as no two prompts share a prefix.
#
#   scripts/load-vs-llama-server.sh [THREADS]        ROWS="1 2 3" picks the rows to run
#
# Rows:
#   1. 8 concurrent chats of about 512 tokens, 16 in all, full cache; KV memory of 8 × 1024 positions;
#   2. 8 concurrent chats of about 8K tokens, TriAttention at budget 1024 per request in spectra, in
#      the KV memory llama-server needs for them (8 × 8192 positions);
#   3. the same 8 requests in the KV memory of 2 full 8K sequences (2 × 8192 positions): llama-server
#      runs 2 at a time (-np 2), spectra admits what fits (flash attention: row 2's better setting).
# The whole script takes about 40 minutes on 2 cores (rows 2 and 3 read 64K prompt tokens each).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp.sh

threads="${1:-$(nproc)}"
rows="${ROWS:-1 2 3}"
model=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -s "$model" ]] || { echo "$model is missing: run scripts/get-model.sh first." >&2; exit 1; }
bin=$(llama_cpp_build llama-server)
cargo build --release --quiet --bin spectra
text=data/tinyshakespeare.txt
[[ -s "$text" ]] || scripts/get-data.sh >/dev/null
stats=$(scripts/tri-attention-stats.sh)
export RAYON_NUM_THREADS="$threads"
out=$(mktemp -d)
port=18080
server_pid=
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap 'stop_server; rm -rf "$out"' EXIT
# KV bytes of one position in both caches: 30 layers × 3 KV heads × (64 + 64) f16 values.
position_bytes=$((30 * 3 * 128 * 2))
# Chat content lengths: the template adds about 30 tokens, and 8K contexts must hold 128 more.
declare -A content_tokens=([512]=480 [8k]=8000)

wait_healthy() { # log
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || { tail -5 "$1" >&2; return 1; }
        sleep 0.5
    done
    echo "the server did not become healthy in 5 minutes" >&2
    return 1
}

llama_server() { # slots positions fa
    "$bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" -t "$threads" -np "$1" -c "$2" \
        -no-kvu -fa "$3" -cram 0 --metrics -b 2048 -ub 512 >"$out/llama.log" 2>&1 &
    server_pid=$!
    wait_healthy "$out/llama.log"
}

spectra_server() { # kv_memory_bytes config
    echo "$2" >"$out/serve.ron"
    target/release/spectra serve --model "$model" --port "$port" --kv-dtype f16 --kv-memory "$1" \
        --config "$out/serve.ron" >"$out/spectra.log" 2>&1 &
    server_pid=$!
    wait_healthy "$out/spectra.log"
}

prompts() { # size count: made once, with llama-server's tokenizer (a server must be up)
    local file="$out/prompts-$1.json"
    [[ -s "$file" ]] || python3 scripts/load-client.py prompts "http://127.0.0.1:$port" "$file" \
        --tokens "${content_tokens[$1]}" --count "$2" --text "$text"
    echo "$file"
}

load() { # row label prompts-file concurrency metric [extra-json]
    python3 scripts/load-client.py run "http://127.0.0.1:$port" "$3" --label "$2" \
        --concurrency "$4" --max-tokens 128 --pid "$server_pid" --poll "$5" ${6:+--extra "$6"} |
        sed "s/^{/{\"row\": $1, /" | tee -a "$out/rows.jsonl" >&2
}

llama_row() { # row slots positions size count
    local fa file
    for fa in off on; do
        llama_server "$2" "$3" "$fa"
        file=$(prompts "$4" "$5")
        load "$1" "llama-server -fa $fa" "$file" 8 "llamacpp:requests_processing"
        stop_server
    done
}

tri_config="(presets: {\"tri\": (type: \"TriAttention\", cfg: (stats: File(\"$stats\")))})"
tri_request='{"kv": {"policy": "tri", "budget": 1024}}'
for row in $rows; do
    case $row in
    1)
        llama_row 1 8 8192 512 16
        spectra_server $((8192 * position_bytes)) "()"
        load 1 "spectra Full" "$out/prompts-512.json" 8 spectra_running_sequences
        stop_server
        ;;
    2)
        llama_row 2 8 65536 8k 8
        spectra_server $((65536 * position_bytes)) "$tri_config"
        load 2 "spectra TriAttention 1024" "$out/prompts-8k.json" 8 spectra_running_sequences "$tri_request"
        stop_server
        ;;
    3)
        best_fa=$(python3 - "$out/rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
llama = [r for r in rows if r["row"] == 2 and r["label"].startswith("llama")]
print(max(llama, key=lambda r: r["tokens_per_s"])["label"].split()[-1] if llama else "off")
PY
)
        llama_server 2 16384 "$best_fa"
        file=$(prompts 8k 8)
        load 3 "llama-server -fa $best_fa" "$file" 8 "llamacpp:requests_processing"
        stop_server
        spectra_server $((16384 * position_bytes)) "$tri_config"
        load 3 "spectra TriAttention 1024" "$file" 8 spectra_running_sequences "$tri_request"
        stop_server
        ;;
    esac
done

python3 - "$out/rows.jsonl" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\nspectra serve vs llama-server, {sys.argv[2]} threads, 128 tokens per answer\n")
print("| row | server | requests | errors | prompt tokens | tok/s | vs llama-server | TTFT p50 / p99 ms "
      "| ITL p50 / p99 ms | most running | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row in sorted({r["row"] for r in rows}):
    these = [r for r in rows if r["row"] == row]
    llama = [r for r in these if r["label"].startswith("llama")]
    best = max(llama, key=lambda r: r["tokens_per_s"]) if llama else None
    for r in these:
        ratio = f"{r['tokens_per_s'] / best['tokens_per_s']:.2f}x" if best and r is not best else ""
        if r is best:
            ratio = "anchor"
        print(f"| {row} | {r['label']} | {r['requests']} | {r['errors']} | {r['prompt_tokens']:.0f} "
              f"| {r['tokens_per_s']:.1f} | {ratio} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} "
              f"| {r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} | {r['most_running']:.0f} "
              f"| {r['peak_rss_mib']:.0f} |")
errors = [r for r in rows if r["errors"]]
for r in errors:
    print(f"row {r['row']} {r['label']}: {r['errors']} errors, first: {r['first_error']}")
PY
