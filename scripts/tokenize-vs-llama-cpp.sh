#!/usr/bin/env bash
# spectra's tokenizer against llama.cpp's (`llama-tokenize --ids`) on the same GGUF: a varied text
# (code, CJK, Korean, emoji, accents, contractions, digits, runs of spaces, tabs and newlines;
# scripts/data/tokenizer-sample.txt) and tiny Shakespeare's validation split. Prints, per text,
# whether the ids are identical, else the first place they part.
#
#   scripts/tokenize-vs-llama-cpp.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp.sh

model="${1:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[[ -s "$model" ]] || { echo "$model is missing: run scripts/get-model.sh" >&2; exit 1; }
bin=$(llama_cpp_build llama-tokenize)
cargo build --release --quiet --bin spectra
[[ -s data/kv/eval.txt ]] || scripts/get-data.sh >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for text in scripts/data/tokenizer-sample.txt data/kv/eval.txt; do
    target/release/spectra tokenize --model "$model" --file "$text" >"$out/spectra"
    "$bin/llama-tokenize" -m "$model" -f "$text" --ids --no-bos --log-disable 2>/dev/null | tail -1 >"$out/llama"
    python3 - "$text" "$out/spectra" "$out/llama" <<'PY'
import ast, sys
text, a, b = sys.argv[1], *(ast.literal_eval(open(p).read()) for p in sys.argv[2:])
if a == b:
    print(f"{text}: {len(a)} tokens, identical")
else:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"{text}: spectra {len(a)} tokens, llama.cpp {len(b)}; they part at token {at}: "
          f"{a[at:at + 5]} against {b[at:at + 5]}")
    sys.exit(1)
PY
done
