#!/usr/bin/env bash
# Runs every test: installs what is missing (system packages, SeaweedFS), then `swift test`.
# Tests that need an object store start a real SeaweedFS through Tools/objectstore.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/Tools/install-deps.sh"
cd "$root"
rm -rf .build/test-tmp
# The crash tests run the shoal binary as a separate worker process (to kill it with SIGKILL).
swift build --product shoal
swift test "$@"
