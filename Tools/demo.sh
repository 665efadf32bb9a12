#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds Shoal, starts a local
# object store (SeaweedFS) and a cache worker, puts a sample dataset in the store, then reads it
# through the cache twice — cold (filled from the store) and warm (from the worker's cache) —
# and prints the throughput of each. Everything is stopped at the end unless --keep is given.
#   Tools/demo.sh [--size 1GiB] [--keep]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
size=1GiB; keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "demo: unknown option $1 (use --size SIZE, --keep)" >&2; exit 2 ;;
    esac
done
dir="$root/.shoal/demo"

"$root/Tools/install-deps.sh"
echo "demo: building shoal (release)..."
(cd "$root" && swift build -c release --product shoal 2>&1 | grep -E "error|warning: " || true)
export SHOAL_BIN="$root/.build/release/shoal"
[ -x "$SHOAL_BIN" ] || { echo "demo: build failed" >&2; exit 1; }

rm -rf "$dir"
"$root/Tools/cluster.sh" start --dir "$dir" --workers 1 --capacity 4GiB
[ $keep -eq 1 ] || trap '"$root/Tools/cluster.sh" stop --dir "$dir"' EXIT
set -a; . "$dir/cluster.env"; set +a

"$SHOAL_BIN" bench populate "s3://demo/dataset" --size "$size" --object-size 64MiB
"$SHOAL_BIN" stat "s3://demo/dataset/part-00000.bin"
echo "demo: reading the dataset through the cache:"
"$SHOAL_BIN" bench read "s3://demo/dataset" --label "cold (filled from the object store)"
"$SHOAL_BIN" bench read "s3://demo/dataset" --label "warm (served from the NVMe cache)  "
"$SHOAL_BIN" bench get "s3://demo/dataset" --concurrency 8 | sed 's/^/baseline: /'
hits=$(curl -s "http://127.0.0.1:17071/metrics" | awk '/^shoal_hits_total /{print $2}')
fills=$(curl -s "http://127.0.0.1:17071/metrics" | awk '/^shoal_fills_total /{print $2}')
echo "demo: worker metrics: $fills blocks filled from the store (cold), $hits block hits (warm) — http://127.0.0.1:17071/metrics"
if [ $keep -eq 1 ]; then
    echo "demo: cluster left running; stop it with: Tools/cluster.sh stop --dir $dir"
fi
