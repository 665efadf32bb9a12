#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds Shoal, starts a local
# object store (SeaweedFS), etcd and a cluster of cache workers (each registers itself in etcd;
# clients route the blocks over them by what they see there), puts a sample dataset in the store, then reads it through the cache twice — cold
# (filled from the store) and warm (from the workers' caches) — and prints the throughput of
# each. Everything is stopped at the end unless --keep is given.
#   Tools/demo.sh [--size 1GiB] [--workers 3] [--keep]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
size=1GiB; keep=0; workers=3
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "demo: unknown option $1 (use --size SIZE, --workers N, --keep)" >&2; exit 2 ;;
    esac
done
dir="$root/.shoal/demo"

"$root/Tools/install-deps.sh"
echo "demo: building shoal (release)..."
(cd "$root" && swift build -c release --product shoal 2>&1 | grep -E "error|warning: " || true)
export SHOAL_BIN="$root/.build/release/shoal"
[ -x "$SHOAL_BIN" ] || { echo "demo: build failed" >&2; exit 1; }

rm -rf "$dir"
# Each worker's cache file takes its whole capacity on disk: 2 GiB each (the dataset is spread
# over them), removed with the rest at the end unless --keep.
"$root/Tools/cluster.sh" start --dir "$dir" --workers "$workers" --capacity 2GiB
[ $keep -eq 1 ] || trap '"$root/Tools/cluster.sh" stop --dir "$dir"; rm -rf "$dir"' EXIT
set -a; . "$dir/cluster.env"; set +a

"$SHOAL_BIN" bench populate "s3://demo/dataset" --size "$size" --object-size 64MiB
"$SHOAL_BIN" ring
"$SHOAL_BIN" stat "s3://demo/dataset/part-00000.bin"
echo "demo: reading the dataset through the cache:"
"$SHOAL_BIN" bench read "s3://demo/dataset" --label "cold (filled from the object store)"
"$SHOAL_BIN" bench read "s3://demo/dataset" --label "warm (served from the NVMe cache)  "
"$SHOAL_BIN" bench get "s3://demo/dataset" --concurrency 8 | sed 's/^/baseline: /'
hits=0; fills=0
for admin in ${SHOAL_ADMINS//,/ }; do
    metrics=$(curl -s "http://$admin/metrics")
    hits=$((hits + $(echo "$metrics" | awk '/^shoal_hits_total /{printf "%d", $2}')))
    fills=$((fills + $(echo "$metrics" | awk '/^shoal_fills_total /{printf "%d", $2}')))
done
echo "demo: the $workers workers' metrics: $fills blocks filled from the store (cold, each once), $hits block hits (warm) — http://${SHOAL_ADMINS%%,*}/metrics"
if [ $keep -eq 1 ]; then
    echo "demo: cluster left running; stop it with: Tools/cluster.sh stop --dir $dir"
fi
