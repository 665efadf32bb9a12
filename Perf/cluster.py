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
- Hit ratio right after a join (blocks read without a store GET, over blocks read), with the
  hand-over to the previous owner (pulled on a miss, and pushed by the previous owners) and in a
  second cluster with hand-over off everywhere (a fourth worker joins a warm three-worker
  cluster), and the passes until it is back at 1.
- A worker killed (SIGKILL): a warm read of the whole dataset right after, against one before;
  the reads that failed (goal 0). The blocks it owned are filled by their fallbacks in that read.

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
import time
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


def start_worker(shoal, work, env, index, base_port):
    """Starts worker `index` beside the cluster's (a copy of w0's config), waits until the view has it."""
    base = open(os.path.join(work, "w0", "worker.yaml")).read()
    port = base_port + 2 * index
    text = (base.replace(f"127.0.0.1:{base_port}\n", f"127.0.0.1:{port}\n").replace(f"127.0.0.1:{base_port + 1}\n", f"127.0.0.1:{port + 1}\n")
            .replace(os.path.join(work, "w0"), os.path.join(work, f"w{index}")).replace("memberID: w0", f"memberID: w{index}"))
    wdir = os.path.join(work, f"w{index}")
    os.makedirs(os.path.join(wdir, "cache"), exist_ok=True)
    with open(os.path.join(wdir, "worker.yaml"), "w") as f:
        f.write(text)
    proc = subprocess.Popen([shoal, "worker", "--config", os.path.join(wdir, "worker.yaml")], stdout=open(os.path.join(wdir, "worker.log"), "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(wdir, "worker.pid"), "w") as f:
        f.write(str(proc.pid))
    for _ in range(200):
        ring = json.loads(sh([shoal, "ring", "--json"], env=env))
        if any(m["id"] == f"w{index}" for m in ring["members"]):
            return proc, f"127.0.0.1:{port + 1}"
        time.sleep(0.05)
    raise SystemExit(f"cluster perf: worker w{index} did not join; see {wdir}/worker.log")


def join_figure(shoal, work, env, admins, timed_read, base_port):
    """A 512 MiB dataset read by the three, then a fourth worker joins: three passes, each with its hit ratio."""
    url = "s3://join/ds"
    blocks = 512 // 4
    sh([shoal, "bench", "populate", url, "--size", "512MiB"], env=env)
    timed_read(url)  # cold: every block filled by the three
    # The fourth worker takes its config from w0's, hand-over settings included.
    proc, admin = start_worker(shoal, work, env, 3, base_port)
    passes = []
    try:
        for _ in range(3):
            before = fills(admins + [admin])
            seconds = timed_read(url)
            passes.append({"hitRatio": 1 - (fills(admins + [admin]) - before) / blocks, "seconds": seconds})
    finally:
        stop_worker(proc)
    return {"passes": passes, "backAfterPass": next((i + 1 for i, p in enumerate(passes) if p["hitRatio"] >= 0.999), None)}


def stop_worker(proc):
    proc.terminate()
    proc.wait(timeout=30)


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
                                 ("one", "s3://one/ds", ["--connections", "6", "--worker", workers[0], "--no-view-discovery"])]:
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

        def timed_read(url, env=env):
            t0 = time.monotonic()
            sh([shoal, "bench", "read", url, "--readers", "2", "--connections", "2", "--json"], env=env)
            return time.monotonic() - t0

        join = {}
        print("cluster perf: a fourth worker joins (with hand-over)...", flush=True)
        join["with hand-over"] = join_figure(shoal, work, env, admins, timed_read, BASE_PORT)

        print("cluster perf: a worker killed...", flush=True)
        sh([shoal, "bench", "populate", "s3://kill/ds", "--size", "512MiB"], env=env)
        timed_read("s3://kill/ds")
        before_kill = statistics.median([timed_read("s3://kill/ds") for _ in range(3)])
        pid = int(open(os.path.join(work, "w1", "worker.pid")).read())
        os.kill(pid, 9)
        failed = 0
        try:
            after_kill = timed_read("s3://kill/ds")
        except subprocess.CalledProcessError:
            failed += 1
            after_kill = float("nan")
        kill = {"warmSecondsBefore": before_kill, "secondsRightAfter": after_kill, "readsFailed": failed}
    finally:
        subprocess.run(cluster + ["stop", "--dir", work], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)  # the workers' cache files take their whole capacity

    # Without hand-over: a second cluster with it off in every worker (no pull, no push).
    print("cluster perf: a fourth worker joins (hand-over off everywhere)...", flush=True)
    work = tempfile.mkdtemp(prefix="shoal-cluster-perf-")
    env = dict(os.environ, SHOAL_BIN=shoal)
    sh(cluster + ["start", "--workers", "3", "--dir", work, "--port", str(BASE_PORT), "--capacity", "2GiB",
                  "--memory-tier", "0", "--shards", "1", "--no-handover"], env=env)
    try:
        for line in open(os.path.join(work, "cluster.env")):
            k, _, v = line.strip().partition("=")
            if k:
                env[k] = v
        join["without"] = join_figure(shoal, work, env, env["SHOAL_ADMINS"].split(","),
                                      lambda url: timed_read(url, env), BASE_PORT)
    finally:
        subprocess.run(cluster + ["stop", "--dir", work], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    ratio = figures["three"]["warm"] / figures["one"]["warm"]
    report = {"size": args.size, "runs": args.runs, "figures": figures, "threeOverOne": ratio, "storeGetsPerBlock8Clients": gets_per_block,
              "join": join, "kill": kill}
    join_lines = []
    for label, j in join.items():
        passes = ", ".join(f"{p['hitRatio']:.2f} ({p['seconds']:.2f} s)" for p in j["passes"])
        join_lines.append(f"- hit ratio after a fourth worker joins, {label}: passes {passes}; back at 1 after pass {j['backAfterPass']}")
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
        f"- store GETs per block, 8 clients reading one cold dataset through three workers: {gets_per_block:.2f} (goal 1.0)",
        *join_lines,
        f"- a worker killed: 512 MiB read in {kill['secondsRightAfter']:.2f} s right after (its blocks filled by their fallbacks), "
        f"{kill['warmSecondsBefore']:.2f} s warm before; reads failed: {kill['readsFailed']} (goal 0)", ""])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cluster.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
