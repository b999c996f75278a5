#!/usr/bin/env bash
# Puts the plain text KVzap's surrogate is fitted on where scripts/kvzap-surrogate.sh looks for it
# (data/kv/kvzap/), from the PyPI sdist requests 2.32.3 (nothing is installed), beside tiny
# Shakespeare's calibration part (scripts/get-data.sh): prose, code and a changelog, as kvpress fits
# on a mix of domains. None of it is evaluation text.
#   data/kv/kvzap/code.txt      requests' Python source (src/requests/*.py);
#   data/kv/kvzap/history.txt   its changelog (HISTORY.md), English prose with versions and names.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=data/kv/kvzap
if [ -s "$dest/code.txt" ] && [ -s "$dest/history.txt" ]; then
    echo "ok: $dest is present"
    exit 0
fi
command -v pip >/dev/null || { echo "missing: pip (python3-pip), needed to download the sdist"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download --quiet --no-deps --no-binary :all: --dest "$tmp" requests==2.32.3
tar xzf "$tmp"/requests-2.32.3.tar.gz -C "$tmp"
mkdir -p "$dest"
cat "$tmp"/requests-2.32.3/src/requests/*.py > "$dest/code.txt"
cp "$tmp"/requests-2.32.3/HISTORY.md "$dest/history.txt"
echo "ok: $(wc -c < "$dest/code.txt") characters of code and $(wc -c < "$dest/history.txt") of changelog in $dest"
