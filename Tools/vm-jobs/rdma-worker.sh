# Sourced by the guest jobs that run a worker over RDMA (Tools/vm-jobs/rdma.sh, Perf/vm/rdma-bench.sh).
# rdma_worker DIR: a worker on the guest's disk (the cache needs O_DIRECT, which /tmp's tmpfs has
# not) serving the folder DIR/store as store "local" (put objects under DIR/store/data first),
# TCP on loopback (admin on 7071), RDMA on rxe0 (the GID of eth0's address). Sets $worker (its
# pid) and $secret (the secret file); exits if it does not start.
rdma_worker() {
    d=$1
    mkdir -p "$d/cache"
    secret=$d/secret
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret"; chmod 600 "$secret"
    cat > "$d/worker.yaml" <<YAML
listen: 127.0.0.1:7070
admin: 127.0.0.1:7071
secretFile: $secret
blockSize: 4MiB
buffers: 32
caches:
  - path: $d/cache
    capacity: 512MiB
    regionSize: 64MiB
stores:
  - name: local
    type: file
    root: $d/store
rdma:
  device: rxe0
  gidAddress: 10.0.2.15
YAML
    "$shoal" worker --config "$d/worker.yaml" > "$d/worker.log" 2>&1 &
    worker=$!
    for _ in $(seq 1 100); do grep -q "worker listening" "$d/worker.log" && break; sleep 0.2; done
    grep "worker listening" "$d/worker.log" || { cat "$d/worker.log"; exit 1; }
}
