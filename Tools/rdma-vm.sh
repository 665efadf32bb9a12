#!/usr/bin/env bash
# The RDMA checks on a real verbs stack: soft-RoCE (rdma_rxe) in a Debian guest under QEMU
# (Tools/vm.sh). Builds a static shoal binary (.build-vm), the guest image if it is missing
# (~4 min once; kept outside the clone), boots the guest and runs Tools/vm-jobs/rdma.sh:
# `shoal selftest rdma` on rxe0, then a worker and a client reading a dataset over RDMA
# byte-exact, and the fallback to TCP when the RDMA link goes down mid-read. Exits with the
# job's status.
#   Tools/rdma-vm.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
Tools/install-deps.sh
swift build -c release --product shoal --static-swift-stdlib --scratch-path .build-vm
Tools/vm.sh build
Tools/vm.sh run Tools/vm-jobs/rdma.sh
