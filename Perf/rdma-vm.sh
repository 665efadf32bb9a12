#!/usr/bin/env bash
# RDMA figures on a real verbs stack: soft-RoCE (rdma_rxe) in the Debian guest of Tools/vm.sh,
# software-emulated (QEMU TCG), so the figures say how Shoal's RDMA path compares with the same
# stack's own limit, not what hardware does. In the guest (Perf/vm/rdma-bench.sh): a worker
# serving RDMA on rxe0 and a dataset of 8 × 16 MiB, warm; then, RUNS times each,
#   - the limit: ib_write_bw (perftest) on rxe0, 4 MiB writes on 8 queue pairs (as many as the
#     client's connections), through rdma_cm, as the stack's own tool runs;
#   - `shoal bench read` over RDMA (--rdma rxe0) and over TCP, 4 readers;
# and the medians with the ratios RDMA/limit and RDMA/TCP, and the worker's RDMA counters
# (bytes per work request, fallbacks).
#   Perf/rdma-vm.sh [--runs N]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        *) echo "rdma-vm.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
Tools/install-deps.sh >/dev/null
swift build -c release --product shoal --static-swift-stdlib --scratch-path .build-vm >/dev/null
Tools/vm.sh build
mkdir -p .shoal/vm
echo "$runs" > .shoal/vm/bench-runs
Tools/vm.sh run Perf/vm/rdma-bench.sh
