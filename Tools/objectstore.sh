#!/usr/bin/env bash
# Starts and stops a local SeaweedFS S3 endpoint for development, tests and benchmarks.
#   Tools/objectstore.sh start DIR [PORT]   data and credentials under DIR; S3 on 127.0.0.1:PORT
#   Tools/objectstore.sh stop DIR
# Every port is set explicitly (PORT .. PORT+9), everything binds to 127.0.0.1, and S3
# authentication is on with a credentials file generated into DIR. Every bucket is a SeaweedFS
# collection with volumes of its own, so the volume limit is raised well above the default.
# `start` waits until the S3
# endpoint answers and writes DIR/s3.env (SHOAL_S3_ENDPOINT, SHOAL_S3_ACCESS_KEY, ...).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
weed="$root/.tools/venv/bin/weed"
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

stop() {
    [ -f "$dir/weed.pid" ] || return 0
    local pid; pid=$(cat "$dir/weed.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        # SeaweedFS can take more than 10 s to exit on SIGTERM; give it 30 s, then kill it.
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "objectstore: SeaweedFS (pid $pid) did not exit in 30 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    rm -f "$dir/weed.pid"
}

case "$cmd" in
start)
    port="${3:-18300}"
    [ -x "$weed" ] || { echo "objectstore: $weed is missing; run Tools/install-deps.sh first" >&2; exit 1; }
    stop
    mkdir -p "$dir/data"
    access="shoal$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    # A second identity that may list but not read: what a worker sees with credentials that
    # do not cover a dataset (tests of a denied read).
    list_access="list$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    list_secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    cat > "$dir/s3.json" <<JSON
{"identities":[{"name":"shoal","credentials":[{"accessKey":"$access","secretKey":"$secret"}],
  "actions":["Admin","Read","Write","List","Tagging"]},
 {"name":"listonly","credentials":[{"accessKey":"$list_access","secretKey":"$list_secret"}],"actions":["List"]}]}
JSON
    chmod 600 "$dir/s3.json"
    # weed must not pick up the caller's AWS credentials.
    env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
    setsid "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port=$((port+1)) -master.port.grpc=$((port+2)) \
        -volume.port=$((port+3)) -volume.port.grpc=$((port+4)) \
        -filer.port=$((port+5)) -filer.port.grpc=$((port+6)) \
        -s3.port=$port -s3.port.grpc=$((port+7)) -s3.port.iceberg=0 -s3.port.lance=0 \
        -admin.port=$((port+8)) -admin.port.grpc=$((port+9)) -admin.ui=false \
        -webdav=false -master.telemetry=false -s3.config="$dir/s3.json" -metricsPort=$((port+10)) \
        -volume.max=1000 -master.volumeSizeLimitMB=1024 \
        > "$dir/weed.log" 2>&1 < /dev/null &
    echo $! > "$dir/weed.pid"
    for _ in $(seq 1 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)
        # An unsigned request is refused (403) once the S3 gateway is up and enforcing auth.
        [ "$code" = "403" ] && break
        if ! kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
            echo "objectstore: SeaweedFS exited; see $dir/weed.log" >&2; tail -20 "$dir/weed.log" >&2; exit 1
        fi
        sleep 0.1
    done
    [ "$code" = "403" ] || { echo "objectstore: S3 on port $port did not answer in 60 s (last: $code)" >&2; stop; exit 1; }
    # A credentials file a worker's store reads (readable by its owner only).
    credentials() {
        (umask 077; printf 'SHOAL_S3_ENDPOINT=http://127.0.0.1:%s\nSHOAL_S3_ACCESS_KEY=%s\nSHOAL_S3_SECRET_KEY=%s\nSHOAL_S3_REGION=us-east-1\n' \
            "$port" "$2" "$3" > "$1")
        chmod 600 "$1"
    }
    credentials "$dir/s3.env" "$access" "$secret"
    credentials "$dir/s3-listonly.env" "$list_access" "$list_secret"
    # Its own Prometheus metrics (requests by bucket, type and status) at port + 10.
    echo "objectstore: SeaweedFS S3 at http://127.0.0.1:$port (credentials in $dir/s3.env)"
    ;;
stop) stop ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
