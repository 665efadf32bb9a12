#!/bin/sh
# Guest job (Tools/vm.sh run Tools/vm-jobs/rdma.sh, or Tools/rdma-vm.sh): the RDMA self test on
# the guest's soft-RoCE device (rxe0 over eth0: a real verbs stack, emulated in software).
# Needs a static build first:
#   swift build -c release --product shoal --static-swift-stdlib --scratch-path .build-vm
set -eu
shoal=/repo/.build-vm/release/shoal
[ -x "$shoal" ] || { echo "no $shoal: build it with --static-swift-stdlib --scratch-path .build-vm"; exit 1; }
echo "== devices (ibv_devices)"
ibv_devices
echo "== shoal selftest rdma"
"$shoal" selftest rdma
echo "== shoal selftest rdma --json"
"$shoal" selftest rdma --json
