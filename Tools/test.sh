#!/usr/bin/env bash
# Runs every test: installs what is missing (system packages, SeaweedFS, the Python test
# packages), then `swift test`, then the Python package's tests (pytest against a real local
# cluster; they build libshoal and the wheel first, and include the C test program).
# Tests that need an object store start a real SeaweedFS through Tools/objectstore.sh.
#   Tools/test.sh [ARGS]     ARGS go to `swift test` (e.g. --filter ClusterTests)
#   Tools/test.sh --torch    also installs PyTorch (CPU; a large download, see README) and runs the
#                            datasets under a real DataLoader, which the default run skips
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
torch=false
if [ "${1:-}" = "--torch" ]; then torch=true; shift; fi
"$root/Tools/install-deps.sh"
cd "$root"
rm -rf .build/test-tmp
# The crash tests run the shoal binary as a separate worker process (to kill it with SIGKILL).
swift build --product shoal
swift test "$@"
Tools/python.sh
pytest_args=(-q -rs)
if $torch; then
    .tools/venv/bin/python -c 'import torch' 2>/dev/null || .tools/venv/bin/pip install -q --disable-pip-version-check torch
    pytest_args+=(--torch)
fi
SHOAL_BIN="$root/.build/debug/shoal" .tools/venv/bin/pytest "${pytest_args[@]}" python/tests
