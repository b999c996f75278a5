#!/usr/bin/env bash
# Puts the training data where the experiments/ configs expect it:
#   data/tinyshakespeare.txt   tiny Shakespeare (1,115,394 characters), for the GPT configs;
#   data/kv/calibration.txt    its first 100,000 characters, for TriAttention's calibration;
#   data/kv/eval.txt           its last 111,540 characters (the GPT's validation split), for `spectra kv`
#                              (disjoint from the calibration text);
#   /usr/share/datasets/fashion-mnist/   Fashion-MNIST (Debian's dataset-fashion-mnist), for the MLP configs.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p data
target=data/tinyshakespeare.txt
if [ -s "$target" ]; then
    echo "ok: $target is present"
elif [ -s ../shared/data/tinyshakespeare.txt ]; then
    cp ../shared/data/tinyshakespeare.txt "$target"
    echo "ok: copied tiny Shakespeare to $target"
else
    echo "missing: $target. Download it with:"
    echo "  curl -L -o $target https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
fi

if [ -s "$target" ]; then
    mkdir -p data/kv
    head -c 100000 "$target" > data/kv/calibration.txt
    tail -c 111540 "$target" > data/kv/eval.txt
    echo "ok: data/kv/calibration.txt and data/kv/eval.txt"
fi

fmnist=/usr/share/datasets/fashion-mnist
if [ -s "$fmnist/train-images-idx3-ubyte.gz" ] && [ -s "$fmnist/t10k-labels-idx1-ubyte.gz" ]; then
    echo "ok: Fashion-MNIST is in $fmnist"
else
    echo "missing: Fashion-MNIST. Install it with:"
    echo "  apt-get update && apt-get install -y dataset-fashion-mnist"
fi
