#!/usr/bin/env python3
"""Warm-up figures (`shoal warm`), on this machine, against three workers and SeaweedFS.

    .tools/venv/bin/python Perf/warm.py [--runs 3] [--large 2GiB] [--small 4000] [--concurrency 16]
                                        [--store-core] [--only large|small]

- Large objects (64 MiB): bytes per second a cold warm caches, as a ratio to the limit, ranged
  GETs of every 4 MiB block straight from SeaweedFS at the same concurrency (`shoal bench get`,
  `--concurrency` GETs in flight, the warm's fill requests in flight) (goal >= 0.9). Each side is
  timed after its listing, as `bench get` times itself: the warm from its summary's `seconds`
  less its `listingSeconds`.
- Small objects (100 KiB): objects per second a cold warm caches, against direct GETs of the same
  objects at the same concurrency, each timed after its listing as above (goal >= 0.9).
- The least any warm must do, on the same machine: the same direct GETs, each block also written
  with O_DIRECT to a preallocated file as a cache disk is written (`shoal bench get --write-to`),
  with no routing, checksum or index. Its ratio to the direct GETs is about the most a warm that
  writes each block as it comes could reach here; the warm's ratio to it is what Shoal's own work
  (requests to the owners, checks, index) costs.
- Store GETs per block when two warms of the same cold prefix run at once (goal exactly 1.0),
  counted by SeaweedFS itself (its Prometheus metrics: GETs answered with data, for the bucket).
- Bytes that crossed to the warming host: what the warm process read from its sockets and files
  (the kernel's count in /proc/PID/io, reported in the warm's summary) against the bytes warmed
  (goal: none but requests, answers and listings).

Each run warms a prefix of its own (cold), and the direct GETs read another of the same shape.
The warming process, the workers and SeaweedFS share this machine's two cores and one disk; the
workers also write every block to their cache disks, which the direct GETs do not. The CPU rows
count what the store's, the workers' and the client's processes used in each (user and system,
/proc), per GiB or per object: where the cores are shared, a warm's extra CPU is taken from the
store. Medians of --runs. Writes warm.json and warm.md to --out (default .shoal/perf); --store-core
and --only add to the name (warm-store-core-small.json).

--store-core runs SeaweedFS alone on CPU 0 (GOMAXPROCS=1) and the workers, the warm and the
direct GETs on the other CPUs, as a store on hosts of its own would be: both sides then get the
same store, and the figure says whether the warm keeps that store as busy as direct GETs do,
rather than how much of a shared CPU it leaves the store. It writes warm-store-core.json and .md.

The ratios are of the medians over the runs; "each run's" rows give the median of the runs' own
ratios, whose two sides ran seconds apart: the machine's drift over minutes cancels in them.
--only measures one kind (and skips the two-warms count), for longer runs of it.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python import read_env, sh  # noqa: E402
from run import parse_size  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_PORT = 17970


def store_gets(metrics_url, bucket):
    with urllib.request.urlopen(metrics_url, timeout=10) as f:
        text = f.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("SeaweedFS_s3_request_total{") and f'bucket="{bucket}"' in line and 'type="GET"' in line \
                and ('code="200"' in line or 'code="206"' in line):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def cpu_seconds(pids):
    """User and system CPU seconds the processes have used so far, together."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(cmd, env, servers):
    """Runs `cmd`; its output and the CPU seconds it and the servers used."""
    before = cpu_seconds(servers)
    start = os.times()
    out = sh(cmd, env=env)
    end = os.times()
    return out, cpu_seconds(servers) - before + (end.children_user - start.children_user) + (end.children_system - start.children_system)


def warm(shoal_bin, env, url, concurrency, servers, pinned):
    out, cpu = timed(pinned([shoal_bin, "warm", url, "--json", "--concurrency", str(concurrency)]), env, servers)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["type"] == "summary" and not summary["failed"], summary
    summary["cpu"] = cpu
    return summary


def direct(shoal_bin, env, url, concurrency, servers, pinned, write_to=None):
    out, cpu = timed(pinned([shoal_bin, "bench", "get", url, "--block-size", "4MiB", "--concurrency", str(concurrency), "--json"]
                            + (["--write-to", write_to] if write_to else [])), env, servers)
    r = json.loads(out)
    assert r["written"] == (r["bytes"] if write_to else 0), r  # 100 KiB and 4 MiB blocks are whole 4 KiB pages
    r["cpu"] = cpu
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    # Each warm and each direct read lasts about 2 s: half a second (512 MiB) swung by 15%
    # between runs on this shared machine.
    ap.add_argument("--large", default="2GiB", help="bytes of 64 MiB objects per run")
    ap.add_argument("--small", type=int, default=4000, help="100 KiB objects per run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--store-core", action="store_true", help="SeaweedFS alone on CPU 0, everything else on the other CPUs")
    ap.add_argument("--only", choices=("large", "small"), help="measure one kind of object only")
    ap.add_argument("--out", default=os.path.join(ROOT, ".shoal", "perf"))
    args = ap.parse_args()
    for name in ("runs", "small", "concurrency"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    cpus = sorted(os.sched_getaffinity(0))
    if args.store_core and (len(cpus) < 2 or cpus[0] != 0):
        sys.exit("warm.py: --store-core needs CPU 0 and at least one more CPU")
    others = ",".join(map(str, cpus[1:]))
    # The commands measured run where the workers do; the store's CPU is its own.
    pinned = (lambda cmd: ["taskset", "-c", others] + cmd) if args.store_core else (lambda cmd: cmd)

    work = os.path.join(ROOT, ".shoal", "perf-warm")
    sh(["swift", "build", "-c", "release", "--product", "shoal"], env=dict(os.environ))
    shoal_bin = os.path.join(ROOT, ".build", "release", "shoal")
    subprocess.run([os.path.join(ROOT, "Tools", "cluster.sh"), "stop", "--dir", work], capture_output=True)
    # Cold means cold: no cache, no objects and no state from an earlier run.
    shutil.rmtree(work, ignore_errors=True)
    kinds = (args.only,) if args.only else ("large", "small")
    large_bytes = parse_size(args.large)
    small_bytes = args.small * 102400
    # Every run's warms stay cached, nothing is evicted: each worker holds about a third of them,
    # with room for uneven placement and the cache's own regions (the caches are preallocated).
    warmed = args.runs * ((large_bytes if "large" in kinds else 0) + (small_bytes if "small" in kinds else 0) + (0 if args.only else 256 << 20))
    capacity = f"{max(4 << 30, int(warmed / 3 * 1.4) + (1 << 30)) >> 20}MiB"
    sh([os.path.join(ROOT, "Tools", "cluster.sh"), "start", "--workers", "3", "--dir", work, "--port", str(BASE_PORT), "--capacity", capacity],
       env=dict(os.environ, SHOAL_BIN=shoal_bin, **({"GOMAXPROCS": "1"} if args.store_core else {})))
    env = dict(os.environ, **read_env(os.path.join(work, "cluster.env")))
    c = args.concurrency
    results = {k + side + cpu: [] for k in ("large", "small") for side in ("", "Direct", "Floor") for cpu in ("", "Cpu")}
    results.update({"getsPerBlock": [], "bytesHere": [], "bytesWarmed": []})
    # The store's and the workers' processes: their CPU is counted with the client's.
    servers = [int(open(os.path.join(work, p)).read().strip()) for p in ("objectstore/weed.pid", "w0/worker.pid", "w1/worker.pid", "w2/worker.pid")]
    if args.store_core:
        sh(["taskset", "-a", "-p", "-c", "0", str(servers[0])])
        for pid in servers[1:]:
            sh(["taskset", "-a", "-p", "-c", others, str(pid)])
    try:
        for i in range(args.runs):
            # Each side reads a prefix of its own; which is written last, and measured first,
            # turns between runs (the store serves the most recently written data a little
            # faster), and the writes are on disk before any is measured (the first read after
            # a populate otherwise shares the machine with the kernel's writeback).
            sides = ("warm", "direct", "floor")[i % 3:] + ("warm", "direct", "floor")[:i % 3]
            for kind, size, each in (("large", args.large, "64MiB"), ("small", str(small_bytes), "100KiB")):
                if kind not in kinds:
                    continue
                for side in sides:
                    sh([shoal_bin, "bench", "populate", f"s3://warmperf/{kind}-{side}-{i}", "--size", size, "--object-size", each], env=env)
            os.sync()
            for kind in kinds:
                for side in sides:
                    # Large: bytes per second and CPU seconds per GiB; small: objects per second
                    # and CPU milliseconds per object.
                    url = f"s3://warmperf/{kind}-{side}-{i}"
                    if side == "warm":
                        r = warm(shoal_bin, env, url, c, servers, pinned)
                    else:
                        r = direct(shoal_bin, env, url, c, servers, pinned, os.path.join(work, "floor.bin") if side == "floor" else None)
                    seconds = r["seconds"] - r.get("listingSeconds", 0)  # bench get's seconds start after its listing
                    count = r["bytes"] if kind == "large" else r["bytes"] / 102400
                    rate, units = count / seconds, count / (2**30 if kind == "large" else 1000)
                    key = kind + {"warm": "", "direct": "Direct", "floor": "Floor"}[side]
                    results[key].append(rate)
                    results[key + "Cpu"].append(r["cpu"] / units)
                    if kind == "large" and side == "warm":
                        results["bytesHere"].append(r["bytesReceivedHere"])
                        results["bytesWarmed"].append(r["bytes"])
            if args.only:
                continue
            # Two warms of one cold prefix at once.
            bucket = f"warmtwice{i}"
            sh([shoal_bin, "bench", "populate", f"s3://{bucket}/d", "--size", "256MiB", "--object-size", "16MiB"], env=env)
            before = store_gets(env["SHOAL_S3_METRICS"], bucket)
            cmd = pinned([shoal_bin, "warm", f"s3://{bucket}/d", "--json", "--concurrency", str(c)])
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
            outs = [p.communicate()[0] for p in procs]
            assert all(p.returncode == 0 for p in procs), outs
            results["getsPerBlock"].append((store_gets(env["SHOAL_S3_METRICS"], bucket) - before) / 64)
    finally:
        subprocess.run([os.path.join(ROOT, "Tools", "cluster.sh"), "stop", "--dir", work], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)  # preallocated caches and the store's data: gigabytes

    for kind in kinds:
        results[kind + "RunRatio"] = [w / d for w, d in zip(results[kind], results[kind + "Direct"])]
        results[kind + "FloorRunRatio"] = [f / d for f, d in zip(results[kind + "Floor"], results[kind + "Direct"])]
    m = {k: statistics.median(v) for k, v in results.items() if v}
    m["runs"] = results
    os.makedirs(args.out, exist_ok=True)
    name = ("warm-store-core" if args.store_core else "warm") + (f"-{args.only}" if args.only else "")
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(m, f, indent=2)
    lines = ["| figure | Shoal | limit | ratio | goal |", "|---|---|---|---|---|"]
    for kind in kinds:
        large = kind == "large"
        objects, unit, rate = ("64 MiB objects", "GB/s", lambda v: f"{v / 1e9:.2f}") if large else ("100 KiB objects", "objects/s", lambda v: f"{v:.0f}")
        what = f"{objects}, {unit}"
        runs = ", ".join(f"{r:.2f}" for r in results[kind + "RunRatio"])
        lines += [f"| warm of {what} / direct {'4 MiB ' if large else ''}GETs at concurrency {c} | {rate(m[kind])} | {rate(m[kind + 'Direct'])} | "
                  f"{m[kind] / m[kind + 'Direct']:.2f} | >= 0.9 |",
                  f"| the same, each run's warm / its direct GETs: median (runs {runs}) | | | {m[kind + 'RunRatio']:.2f} | >= 0.9 |",
                  f"| the least a warm must do (direct GETs, each block written O_DIRECT), {what} / direct GETs | "
                  f"{rate(m[kind + 'Floor'])} | {rate(m[kind + 'Direct'])} | {m[kind + 'Floor'] / m[kind + 'Direct']:.2f} | |",
                  f"| warm / the least a warm must do, {objects} | | | {m[kind] / m[kind + 'Floor']:.2f} | |",
                  (f"| CPU seconds per GiB, 64 MiB objects (store, workers and client together) | {m['largeCpu']:.2f} | {m['largeDirectCpu']:.2f} | "
                   if large else
                   f"| CPU milliseconds per 100 KiB object (store, workers and client together) | {m['smallCpu']:.2f} | {m['smallDirectCpu']:.2f} | ")
                  + f"{m[kind + 'Cpu'] / m[kind + 'DirectCpu']:.2f} | |",
                  f"| the same CPU, the least a warm must do / direct GETs | | | {m[kind + 'FloorCpu'] / m[kind + 'DirectCpu']:.2f} | |"]
    if not args.only:
        lines += [f"| store GETs per block, two warms of one cold prefix at once | {m['getsPerBlock']:.3f} | 1 | | exactly 1.0 |",
                  f"| bytes read by the warming process / bytes warmed (64 MiB objects) | {m['bytesHere']:.0f} | {m['bytesWarmed']:.0f} | "
                  f"{m['bytesHere'] / m['bytesWarmed']:.5f} | requests and answers only |"]
    text = "\n".join(lines)
    if args.store_core:
        text = f"SeaweedFS alone on CPU 0; workers, warm and direct GETs on CPUs {others}\n\n" + text
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
