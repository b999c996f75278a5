#!/usr/bin/env bash
# Fuzzes every reader of untrusted input (RON configs, GGUF models, checkpoints, KV query stats) with
# CASES mutated inputs each (default 250000: a million in all), and `spectra serve` with REQUESTS
# mutated requests (default 20000) over localhost, and the generation API with as many hostile
# requests, and prints each reader's count, time and outcome.
# A panic or a 5xx fails the run; an abort ends it with the signal.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-250000}"
requests="${2:-20000}"
SPECTRA_FUZZ_CASES="$cases" SPECTRA_FUZZ_REQUESTS="$requests" \
    cargo test --release --quiet --test fuzz -- --nocapture --test-threads 1 2>&1 |
    grep -E 'fuzz |panicked|memory allocation|signal|FAILED|test result'
