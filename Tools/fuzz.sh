#!/usr/bin/env bash
# A longer run of the fuzz test that drives the worker's connection state machine (handshake and
# requests) with mutated frames delivered in random pieces (CI runs 2,000 iterations, a fixed seed).
#   Tools/fuzz.sh [ITERATIONS] [SEED]      default: 1,000,000 iterations, a random seed
# A failure names its iteration; run again with the printed seed to repeat it.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-1000000}"
seed="${2:-$(od -An -tu4 -N4 /dev/urandom | tr -d ' ')}"
echo "fuzz: $iterations iterations, seed $seed"
swift build --build-tests > /dev/null
SHOAL_FUZZ_ITERATIONS="$iterations" SHOAL_FUZZ_SEED="$seed" swift test --skip-build --filter ConnectionFuzzTests
