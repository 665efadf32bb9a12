#!/bin/sh
# Guest job (Tools/vm.sh run Tools/vm-jobs/rdma.sh, or Tools/rdma-vm.sh), on the guest's
# soft-RoCE device (rxe0 over eth0: a real verbs stack, emulated in software):
#   1. `shoal selftest rdma`;
#   2. a worker serving RDMA and a client reading a dataset through rxe0, byte-exact, cold and warm;
#   3. the RDMA link taken down in the middle of a read: the read completes over TCP, byte-exact;
#      a client started while it is down reads over TCP from the start.
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

w=/var/tmp/shoal-rdma
rm -rf "$w"; mkdir -p "$w/store/data"
for i in 1 2 3; do head -c $((24 << 20)) /dev/urandom > "$w/store/data/part-$i"; done
head -c $((160 << 20)) /dev/urandom > "$w/store/data/big"
. /repo/Tools/vm-jobs/rdma-worker.sh
rdma_worker "$w"
cat_() { "$shoal" cat --worker 127.0.0.1:7070 --secret-file "$secret" --rdma rxe0 --rdma-gid-address 10.0.2.15 "$@"; }

echo "== a dataset read over RDMA (cold: filled from the store; warm: from the cache)"
for pass in cold warm; do
  for i in 1 2 3; do
    start=$(date +%s%N)
    got=$(cat_ "s3://local@data/part-$i" 2> "$w/cat.err" | sha256sum | cut -d' ' -f1)
    end=$(date +%s%N)
    want=$(sha256sum < "$w/store/data/part-$i" | cut -d' ' -f1)
    cat "$w/cat.err"
    [ "$got" = "$want" ] || { echo "FAIL: part-$i ($pass) differs"; exit 1; }
    grep -q " 0 answered over TCP" "$w/cat.err" || { echo "FAIL: part-$i ($pass) fell back to TCP"; exit 1; }
    echo "ok: part-$i $pass, 24 MiB byte-exact over RDMA in $(( (end - start) / 1000000 )) ms"
  done
done

echo "== the same, warm, over TCP (no --rdma), for comparison"
start=$(date +%s%N)
got=$("$shoal" cat --worker 127.0.0.1:7070 --secret-file "$secret" s3://local@data/part-1 | sha256sum | cut -d' ' -f1)
end=$(date +%s%N)
[ "$got" = "$(sha256sum < "$w/store/data/part-1" | cut -d' ' -f1)" ] || { echo "FAIL: part-1 over TCP differs"; exit 1; }
echo "ok: part-1 warm, 24 MiB byte-exact over TCP in $(( (end - start) / 1000000 )) ms"

# rxe0 is bound to eth0: taking eth0 down takes the RDMA port down (a link lost mid-read). The
# worker's writes then fail, and it answers those READs over TCP (loopback) from the same buffers.
echo "== the RDMA link taken down mid-read"
cat_ s3://local@data/big > "$w/big.out" 2> "$w/big.err" &
reader=$!
sleep 1.5
ip link set eth0 down
rdma link show
wait $reader || { echo "FAIL: the read failed"; cat "$w/big.err"; tail -20 "$w/worker.log"; exit 1; }
cat "$w/big.err"
cmp "$w/big.out" "$w/store/data/big" || { echo "FAIL: big differs"; exit 1; }
grep -q " 0 reads by RDMA" "$w/big.err" && { echo "FAIL: nothing came by RDMA before the link went"; exit 1; }
grep -q " 0 answered over TCP" "$w/big.err" && { echo "FAIL: no READ was answered over TCP after the link went"; exit 1; }
echo "ok: 160 MiB byte-exact; RDMA until the link went, TCP after"
grep "RDMA failed" "$w/worker.log" | head -2

echo "== a new client while the RDMA port is down: TCP from the start"
got=$(cat_ s3://local@data/part-2 2> "$w/cat.err" | sha256sum | cut -d' ' -f1)
cat "$w/cat.err"
[ "$got" = "$(sha256sum < "$w/store/data/part-2" | cut -d' ' -f1)" ] || { echo "FAIL: part-2 differs"; exit 1; }
grep -q "rdma not used" "$w/cat.err" || { echo "FAIL: RDMA was used on a port that is down"; exit 1; }
echo "ok: part-2 byte-exact over TCP"
ip link set eth0 up
kill $worker 2>/dev/null || true
wait $worker 2>/dev/null || true
echo "== done"
