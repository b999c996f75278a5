#!/usr/bin/env bash
# spectra's training step against the Lipschitz paper's own JAX code, side by side on this machine:
# the paper's Shakespeare GPT (experiments/shakespeare_softcap.ron: d 256, 3 blocks, 4 heads, Muon,
# spectral soft cap, batch 64 × 256).
#
#   scripts/bench-vs-reference.sh PATH [STEPS]
#
# PATH is a checkout of https://github.com/Arongil/lipschitz-transformers (measured at 158692e). Its
# code runs unmodified, in a venv made once under data/reference-venv with jax 0.10.2 (CPU) and the
# packages it imports. Each side trains STEPS steps (default 25); the medians leave out the first three
# (compilation, warm-up). Order: spectra, the reference, spectra again, so that drift on a shared
# machine shows as a difference between spectra's two medians. Then the train_step bench puts the step
# beside the matmul roofline measured in its own run.
set -euo pipefail
cd "$(dirname "$0")/.."

ref="${1:-}"
steps="${2:-25}"
if [[ -z "$ref" || ! -f "$ref/trainer.py" || ! -f "$ref/models.py" ]]; then
    echo "skipped: no checkout of the paper's code given (or $ref has no trainer.py)."
    echo "  git clone https://github.com/Arongil/lipschitz-transformers /tmp/lipschitz-transformers"
    echo "  scripts/bench-vs-reference.sh /tmp/lipschitz-transformers"
    exit 0
fi
if [[ ! -f data/tinyshakespeare.txt ]]; then
    echo "data/tinyshakespeare.txt is missing: run scripts/get-data.sh first." >&2
    exit 1
fi

venv=data/reference-venv
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import jax" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "jax==0.10.2" numpy huggingface_hub requests psutil python-dotenv
fi
# The paper's loader downloads input.txt into its checkout unless it is there; it is the same text.
mkdir -p "$ref/data/shakespeare"
[[ -f "$ref/data/shakespeare/input.txt" ]] || cp data/tinyshakespeare.txt "$ref/data/shakespeare/input.txt"

cargo build --release --quiet --bin spectra
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Median step_seconds (and the constraints' share) of metrics.jsonl past the first three steps.
spectra_run() {
    rm -rf "$out/run"
    target/release/spectra train experiments/shakespeare_softcap.ron --steps 2000 \
        --stop-at "$steps" --output "$out/run" --quiet >/dev/null || [[ $? == 75 ]] # 75: stopped as asked
    python3 - "$out/run/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if "step_seconds" in r][3:]
step = statistics.median(r["step_seconds"] for r in steps)
share = sum(r["constraint_seconds"] for r in steps) / sum(r["step_seconds"] for r in steps)
print(f"{step:.4f} {share:.4f}")
PY
}

echo "spectra ($steps steps) ..."
read -r first share1 < <(spectra_run)
echo "  median step $first s (constraints $share1 of it)"
echo "the paper's code ($steps steps) ..."
"$venv/bin/python" scripts/reference_step.py "$ref" "$steps" | tee "$out/reference.log" | grep -E "^jax|MEDIAN" | cut -c1-120
reference="$(awk '/REFERENCE_MEDIAN_STEP_SECONDS/ {print $2}' "$out/reference.log")"
echo "spectra again ..."
read -r second share2 < <(spectra_run)
echo "  median step $second s (constraints $share2 of it)"

python3 - "$first" "$second" "$reference" <<'PY'
import sys
first, second, reference = map(float, sys.argv[1:])
tokens = 64 * 256
spectra = (first + second) / 2
print()
print(f"| {'':<28} | s/step | tokens/s |")
print(f"| spectra (mean of 2 medians) | {spectra:.3f} | {tokens / spectra:.0f} |")
print(f"| paper's JAX code            | {reference:.3f} | {tokens / reference:.0f} |")
print(f"spectra / reference tokens/s: {reference / spectra:.2f}x "
      f"(against each spectra run: {reference / first:.2f}x, {reference / second:.2f}x)")
PY

echo
echo "the step against the matmul roofline (cargo bench --bench train_step) ..."
cargo bench --quiet --bench train_step --no-run
cargo bench --quiet --bench train_step 2>/dev/null | sed -n '/^Summary/,$p'
