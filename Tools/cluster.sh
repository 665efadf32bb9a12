#!/usr/bin/env bash
# A local Shoal cluster on this machine: SeaweedFS as the object store, etcd for membership and
# N cache workers.
#   Tools/cluster.sh start [--workers N] [--dir DIR] [--capacity SIZE] [--port BASE] [--tls]
#                          [--memory-tier SIZE] [--shards N] [--membership etcd|file] [--no-handover]
#   Tools/cluster.sh stop  [--dir DIR]
# Workers listen on 127.0.0.1:BASE, BASE+2, ... (admin on the odd ports); each registers itself
# in etcd (127.0.0.1:BASE+150, authentication on) under /shoal/default/, and clients watch that.
# --membership file uses a members file (DIR/members.yaml) instead of etcd. `start` writes
# DIR/cluster.env: source it and `shoal cat s3://...` reads through the cluster. --tls makes a CA
# and a certificate per worker with openssl (DIR/tls) and runs the data plane over TLS 1.3.
# The workers share this host's cores as separate hosts would have their own: each gets
# cores/N io shards (at least one) unless --shards says otherwise.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"; shift || true
dir="$root/.shoal/cluster"; workers=1; capacity=4GiB; base=17070; shoal="${SHOAL_BIN:-}"; tls=false; tier=""; shards=""; membership=etcd; handover=true

while [ $# -gt 0 ]; do
    case "$1" in
        --workers) workers="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --capacity) capacity="$2"; shift 2 ;;
        --port) base="$2"; shift 2 ;;
        --tls) tls=true; shift ;;
        --memory-tier) tier="$2"; shift 2 ;;
        --shards) shards="$2"; shift 2 ;;
        --membership) membership="$2"; shift 2 ;;
        --no-handover) handover=false; shift ;;
        *) echo "cluster: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$membership" = etcd ] || [ "$membership" = file ] || { echo "cluster: --membership is etcd or file, not $membership" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

stop_workers() {
    for pidfile in "$dir"/w*/worker.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

case "$cmd" in
start)
    case "$workers" in
        '' | *[!0-9]* | 0) echo "cluster: --workers must be a whole number of 1 or more, not '$workers'" >&2; exit 2 ;;
    esac
    if [ -z "$shards" ]; then shards=$(( $(nproc) / workers )); [ "$shards" -ge 1 ] || shards=1; fi
    # Ports in the ephemeral range are handed to client sockets: a client of a stopped worker
    # there can connect to itself. Keep the workers' and the store's ports below it.
    ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    if [ $((base + 2 * workers + 160)) -ge "$ephemeral_low" ]; then
        echo "cluster: --port $base puts ports in this host's ephemeral range (from $ephemeral_low, /proc/sys/net/ipv4/ip_local_port_range); pick a base below $((ephemeral_low - 2 * workers - 160))" >&2
        exit 2
    fi
    if [ -z "$shoal" ]; then
        (cd "$root" && swift build -c release --product shoal >/dev/null)
        shoal="$root/.build/release/shoal"
    fi
    stop_workers
    "$root/Tools/objectstore.sh" start "$dir/objectstore" $((base + 100)) >/dev/null
    if [ "$membership" = etcd ]; then "$root/Tools/etcd.sh" start "$dir/etcd" $((base + 150)) >/dev/null; fi
    # The secret is created private (a worker refuses one that group or others can read).
    [ -f "$dir/secret" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/secret")
    chmod 600 "$dir/secret"
    if $tls; then
        mkdir -p "$dir/tls"
        if [ ! -f "$dir/tls/ca.pem" ]; then
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=shoal-local-ca \
                -keyout "$dir/tls/ca.key" -out "$dir/tls/ca.pem" 2>/dev/null
            chmod 600 "$dir/tls/ca.key"
        fi
        # Every worker listens on 127.0.0.1: one certificate for that address serves them all.
        if [ ! -f "$dir/tls/worker.pem" ]; then
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=shoal-worker \
                -keyout "$dir/tls/worker.key" -out "$dir/tls/worker.csr" 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$dir/tls/ext.cnf"
            openssl x509 -req -in "$dir/tls/worker.csr" -CA "$dir/tls/ca.pem" -CAkey "$dir/tls/ca.key" -CAcreateserial \
                -days 365 -extfile "$dir/tls/ext.cnf" -out "$dir/tls/worker.pem" 2>/dev/null
            chmod 600 "$dir/tls/worker.key"
        fi
    fi
    # With --membership file, the members file clients and workers route by (ids w0, w1, ...;
    # weight: the cache capacity). With etcd each worker registers itself the same way.
    # Written as JSON (which is YAML too), so libshoal and the Python package can read it.
    [ "$membership" = file ] && { echo '{"epoch": 1, "members": ['
      for i in $(seq 0 $((workers - 1))); do
          [ "$i" -gt 0 ] && echo ","
          printf '  {"id": "w%s", "address": "127.0.0.1:%s", "weight": "%s", "state": "active"}' "$i" "$((base + 2 * i))" "$capacity"
      done; echo; echo ']}'; } > "$dir/members.yaml"
    addresses=(); admins=()
    for i in $(seq 0 $((workers - 1))); do
        w="$dir/w$i"; mkdir -p "$w/cache"
        port=$((base + 2 * i))
        cat > "$w/worker.yaml" <<YAML
# Generated by Tools/cluster.sh; every key is described in docs/CONFIG.md.
listen: 127.0.0.1:$port
admin: 127.0.0.1:$((port + 1))
secretFile: $dir/secret
blockSize: 4MiB
buffers: 32
metadataTTL: 60s
caches:
  - path: $w/cache
    capacity: $capacity
memberID: w$i
stores:
  - name: default
    type: s3
    credentialsFile: $dir/objectstore/s3.env
  # The same store through credentials that may list but not read (tests of a denied read).
  - name: listonly
    type: s3
    credentialsFile: $dir/objectstore/s3-listonly.env
YAML
        if [ "$membership" = etcd ]; then
            printf 'etcd:\n  endpoints: ["127.0.0.1:%s"]\n  prefix: /shoal/default/\n  credentialsFile: %s\n' "$((base + 150))" "$dir/etcd/etcd.env" >> "$w/worker.yaml"
        else
            echo "membersFile: $dir/members.yaml" >> "$w/worker.yaml"
        fi
        if $tls; then
            printf 'tls:\n  certFile: %s\n  keyFile: %s\n' "$dir/tls/worker.pem" "$dir/tls/worker.key" >> "$w/worker.yaml"
        fi
        if [ -n "$tier" ]; then echo "memoryTier: $tier" >> "$w/worker.yaml"; fi
        echo "shards: $shards" >> "$w/worker.yaml"
        if ! $handover; then printf 'handover: 0\nhandoverRate: 0\n' >> "$w/worker.yaml"; fi
        setsid "$shoal" worker --config "$w/worker.yaml" > "$w/worker.log" 2>&1 < /dev/null &
        echo $! > "$w/worker.pid"
        addresses+=("127.0.0.1:$port"); admins+=("127.0.0.1:$((port + 1))")
    done
    for i in $(seq 0 $((workers - 1))); do
        port=$((base + 2 * i + 1))
        for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { echo "cluster: worker $i did not start; see $dir/w$i/worker.log" >&2; tail -5 "$dir/w$i/worker.log" >&2; exit 1; }
    done
    # It holds the store's and etcd's credentials: readable by its owner only.
    (umask 077; { cat "$dir/objectstore/s3.env"
      echo "SHOAL_WORKERS=$(IFS=,; echo "${addresses[*]}")"
      if [ "$membership" = etcd ]; then
          echo "SHOAL_ETCD=127.0.0.1:$((base + 150))"; echo "SHOAL_ETCD_CREDENTIALS_FILE=$dir/etcd/etcd.env"; echo "SHOAL_MEMBERS_FILE="
      else
          echo "SHOAL_ETCD="; echo "SHOAL_MEMBERS_FILE=$dir/members.yaml"
      fi
      echo "SHOAL_ADMINS=$(IFS=,; echo "${admins[*]}")"
      echo "SHOAL_SECRET_FILE=$dir/secret"
      echo "SHOAL_S3_METRICS=http://127.0.0.1:$((base + 110))/metrics"
      if $tls; then echo "SHOAL_TLS_CA_FILE=$dir/tls/ca.pem"; else echo "SHOAL_TLS_CA_FILE="; fi
      echo "SHOAL_BIN=$shoal"; } > "$dir/cluster.env")
    if [ "$membership" = etcd ]; then view="etcd 127.0.0.1:$((base + 150))"; else view="members file $dir/members.yaml"; fi
    echo "cluster: $workers worker(s) at ${addresses[*]} ($view); object store $(grep ENDPOINT "$dir/cluster.env" | cut -d= -f2)"
    echo "cluster: set -a; . $dir/cluster.env; set +a   # then: shoal cat s3://bucket/key"
    ;;
stop)
    stop_workers
    "$root/Tools/objectstore.sh" stop "$dir/objectstore"
    if [ -d "$dir/etcd" ]; then "$root/Tools/etcd.sh" stop "$dir/etcd"; fi
    ;;
*) echo "usage: $0 start|stop [--workers N] [--dir DIR] [--capacity SIZE] [--port BASE] [--tls] [--memory-tier SIZE] [--shards N] [--membership etcd|file] [--no-handover]" >&2; exit 2 ;;
esac
