#!/usr/bin/env bash
# Starts and stops a local etcd (Debian's etcd-server) for the cluster's membership.
#   Tools/etcd.sh start DIR [PORT]   data under DIR; clients on 127.0.0.1:PORT, peers on PORT+1
#   Tools/etcd.sh stop DIR
# Authentication is on: a root user for administration (DIR/root.env) and a user `shoal` that
# may read and write only the keys under /shoal/ (DIR/etcd.env: SHOAL_ETCD, SHOAL_ETCD_USER,
# SHOAL_ETCD_PASSWORD; both files readable by their owner only). Workers register there and
# clients watch it, so nothing without the password can change the view.
set -euo pipefail
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

stop() {
    [ -f "$dir/etcd.pid" ] || return 0
    local pid; pid=$(cat "$dir/etcd.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/etcd.pid"
}

case "$cmd" in
start)
    port="${3:-18400}"
    command -v etcd >/dev/null && command -v etcdctl >/dev/null || { echo "etcd: etcd or etcdctl is missing; run Tools/install-deps.sh first" >&2; exit 1; }
    stop
    rm -rf "$dir/data"
    setsid etcd --name shoal --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
        --initial-cluster "shoal=http://127.0.0.1:$((port + 1))" --log-level warn \
        > "$dir/etcd.log" 2>&1 < /dev/null &
    echo $! > "$dir/etcd.pid"
    ctl() { ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$port" "$@"; }
    for _ in $(seq 1 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
    ctl endpoint health >/dev/null 2>&1 || { echo "etcd: did not answer on 127.0.0.1:$port; see $dir/etcd.log" >&2; tail -5 "$dir/etcd.log" >&2; stop; exit 1; }
    root_pw="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    shoal_pw="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    ctl user add "root:$root_pw" >/dev/null
    ctl user grant-role root root >/dev/null
    ctl role add shoal >/dev/null
    ctl role grant-permission shoal --prefix=true readwrite /shoal/ >/dev/null
    ctl user add "shoal:$shoal_pw" >/dev/null
    ctl user grant-role shoal shoal >/dev/null
    ctl auth enable >/dev/null
    (umask 077
     printf 'ETCD_ROOT_USER=root\nETCD_ROOT_PASSWORD=%s\n' "$root_pw" > "$dir/root.env"
     printf 'SHOAL_ETCD=127.0.0.1:%s\nSHOAL_ETCD_USER=shoal\nSHOAL_ETCD_PASSWORD=%s\n' "$port" "$shoal_pw" > "$dir/etcd.env")
    echo "etcd: 127.0.0.1:$port, authentication on (credentials in $dir/etcd.env)"
    ;;
stop) stop ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
