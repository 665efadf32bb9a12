#!/bin/sh
# Guest job of Perf/rdma-vm.sh: RDMA against its limit and against TCP, on rxe0 (soft-RoCE).
set -eu
shoal=/repo/.build-vm/release/shoal
runs=$(cat /repo/.shoal/vm/bench-runs 2>/dev/null || echo 3)
w=/var/tmp/shoal-bench
rm -rf "$w"; mkdir -p "$w/store/data"
for i in 1 2 3 4 5 6 7 8; do head -c $((16 << 20)) /dev/urandom > "$w/store/data/part-$i"; done
. /repo/Tools/vm-jobs/rdma-worker.sh
rdma_worker "$w"
bench() { "$shoal" bench read --json --readers 4 --worker 127.0.0.1:7070 --secret-file "$secret" "$@" s3://local@data/; }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bench > /dev/null  # warm: every block filled and cached
: > "$w/limit"; : > "$w/rdma"; : > "$w/tcp"
for r in $(seq 1 "$runs"); do
    ib_write_bw -R -d rxe0 -q 8 -s 4194304 -n 32 -F > "$w/ibs.out" 2>&1 &
    server=$!
    sleep 1
    ib_write_bw -R -d rxe0 -q 8 -s 4194304 -n 32 -F 10.0.2.15 > "$w/ibc.out" 2>&1 || true
    wait $server || true
    # The row under the header: #bytes #iterations BW-peak BW-average[MB/sec] MsgRate.
    awk '/^ *4194304 /{print $4 * 1048576}' "$w/ibc.out" >> "$w/limit"
    bench --rdma rxe0 --rdma-gid-address 10.0.2.15 > "$w/r.json"
    field bytesPerSecond < "$w/r.json" >> "$w/rdma"
    bench > "$w/t.json"
    field bytesPerSecond < "$w/t.json" >> "$w/tcp"
    echo "run $r: limit $(tail -1 "$w/limit") B/s, rdma $(tail -1 "$w/rdma") B/s ($(cat "$w/r.json" | field rdmaReads) reads by RDMA, $(cat "$w/r.json" | field rdmaFallbacks) fallbacks), tcp $(tail -1 "$w/tcp") B/s"
done
limit=$(median < "$w/limit"); rdma=$(median < "$w/rdma"); tcp=$(median < "$w/tcp")
"$shoal" stats --json --admin 127.0.0.1:7071 --secret-file "$secret" --interval 0.2 > "$w/stats.json" 2>&1 || true
writes=$(field rdmaWritesTotal < "$w/stats.json"); bytes=$(field rdmaBytesTotal < "$w/stats.json"); fallbacks=$(field rdmaFallbacksTotal < "$w/stats.json")
awk -v l="$limit" -v r="$rdma" -v t="$tcp" -v n="$runs" -v w="$writes" -v b="$bytes" -v f="$fallbacks" 'BEGIN {
    printf "medians of %d runs (soft-RoCE under QEMU TCG; emulation speed, not hardware):\n", n
    printf "  limit  ib_write_bw rxe0, 8 QPs, 4 MiB   %8.1f MiB/s\n", l / 1048576
    printf "  shoal  bench read over RDMA, 4 readers   %8.1f MiB/s  = %.2f of the limit\n", r / 1048576, r / l
    printf "  shoal  bench read over TCP, 4 readers    %8.1f MiB/s  (RDMA/TCP %.2f)\n", t / 1048576, r / t
    if (w > 0) printf "  worker: %d RDMA writes, %.0f bytes per work request, %d fallbacks to TCP\n", w, b / w, f
}'
kill $worker 2>/dev/null || true
wait $worker 2>/dev/null || true
