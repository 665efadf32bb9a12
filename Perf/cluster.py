#!/usr/bin/env python3
"""Cluster figures, on this machine: three workers against one, and store GETs per block.

    python3 Perf/cluster.py [--size 1GiB] [--runs 3] [--out DIR]

- Warm sequential reads through three workers as a ratio to one worker (goal >= 0.95): the same
  number of client connections in both (2 per worker against 6), every worker with the DRAM tier
  off and one io shard, each dataset read cold once and then `--runs` times warm (medians). The
  workers share this machine's disk and cores, so this shows that a read runs on all owners at
  once and loses nothing by being spread, not that three hosts are faster.
- Store GETs per block when 8 clients read the same cold dataset at once through three workers
  (goal 1.0): every block has one owner, which fills it once.

Starts its own SeaweedFS and workers (Tools/cluster.sh) and stops them. Writes cluster.json and
cluster.md to --out (default .shoal/perf).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_PORT = 17370


def sh(cmd, env=None):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def fills(admins):
    total = 0
    for a in admins:
        for line in urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode().splitlines():
            if line.startswith("shoal_fills_total "):
                total += int(float(line.split()[1]))
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, ".shoal/perf"))
    args = p.parse_args()
    subprocess.run(["swift", "build", "-c", "release", "--product", "shoal"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    shoal = os.path.join(ROOT, ".build/release/shoal")
    work = tempfile.mkdtemp(prefix="shoal-cluster-perf-")
    env = dict(os.environ, SHOAL_BIN=shoal)
    cluster = [os.path.join(ROOT, "Tools/cluster.sh")]
    sh(cluster + ["start", "--workers", "3", "--dir", work, "--port", str(BASE_PORT), "--capacity", "3GiB",
                  "--memory-tier", "0", "--shards", "1"], env=env)
    try:
        for line in open(os.path.join(work, "cluster.env")):
            k, _, v = line.strip().partition("=")
            if k:
                env[k] = v
        workers = env["SHOAL_WORKERS"].split(",")
        admins = env["SHOAL_ADMINS"].split(",")

        def read(url, extra):
            out = json.loads(sh([shoal, "bench", "read", url, "--readers", "2", "--json", *extra], env=env))
            return out["bytesPerSecond"]

        figures = {}
        for name, url, extra in [("three", "s3://three/ds", ["--connections", "2"]),
                                 ("one", "s3://one/ds", ["--connections", "6", "--worker", workers[0]])]:
            print(f"cluster perf: {name} worker(s)...", flush=True)
            sh([shoal, "bench", "populate", url, "--size", args.size], env=env)
            cold = read(url, extra)
            warm = [read(url, extra) for _ in range(args.runs)]
            figures[name] = {"cold": cold, "warm": statistics.median(warm), "warmMin": min(warm), "warmMax": max(warm)}

        print("cluster perf: 8 clients, one cold dataset...", flush=True)
        sh([shoal, "bench", "populate", "s3://eight/ds", "--size", "512MiB"], env=env)
        before = fills(admins)
        procs = [subprocess.Popen([shoal, "bench", "read", "s3://eight/ds", "--readers", "1", "--connections", "2", "--json"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(8)]
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"cluster perf: a reader failed: {proc.stderr.read().decode().strip()}")
        gets_per_block = (fills(admins) - before) / (512 // 4)
    finally:
        subprocess.run(cluster + ["stop", "--dir", work], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)  # the workers' cache files take their whole capacity

    ratio = figures["three"]["warm"] / figures["one"]["warm"]
    report = {"size": args.size, "runs": args.runs, "figures": figures, "threeOverOne": ratio, "storeGetsPerBlock8Clients": gets_per_block}
    gb = lambda x: f"{x / 1e9:.2f}"
    md = "\n".join([
        "# Cluster perf", "",
        f"`python3 Perf/cluster.py --size {args.size} --runs {args.runs}`: warm figures are medians of {args.runs} runs (min–max).", "",
        "| | cold GB/s | warm GB/s |", "|---|---|---|",
        f"| three workers, 2 connections each | {gb(figures['three']['cold'])} | {gb(figures['three']['warm'])} "
        f"({gb(figures['three']['warmMin'])}–{gb(figures['three']['warmMax'])}) |",
        f"| one worker, 6 connections | {gb(figures['one']['cold'])} | {gb(figures['one']['warm'])} "
        f"({gb(figures['one']['warmMin'])}–{gb(figures['one']['warmMax'])}) |", "",
        f"- warm, three workers / one: {ratio:.2f} (goal ≥ 0.95: {'met' if ratio >= 0.95 else 'not met'})",
        f"- store GETs per block, 8 clients reading one cold dataset through three workers: {gets_per_block:.2f} (goal 1.0)", ""])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cluster.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
