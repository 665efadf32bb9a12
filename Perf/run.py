#!/usr/bin/env python3
"""Shoal beside its limits, measured in one run on one machine.

    python3 Perf/run.py [--quick] [--runs N] [--size 1GiB] [--out DIR]

Limits: fio (io_uring, O_DIRECT, sequential, same block size and queue depth as the client)
on the cache folder's disk; iperf3 on loopback; direct ranged GETs from the same SeaweedFS at the
same concurrency. Shoal: one client reading a dataset sequentially, cold (fresh cache: every
block filled from the store) and warm (every block from the worker's cache). Each figure is
the median of --runs runs (min-max shown); ratios are against limits from the same run.
Writes report.json and report.md to --out (default .shoal/perf).
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 4 << 20


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def parse_size(s):
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return int(float(num) * units[s[len(num):].lower()])


class Run:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.work = os.path.join(self.out, "work")
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.shoal = os.path.join(ROOT, ".build/release/shoal")
        self.objectstore = os.path.join(self.work, "objectstore")
        self.port = 18500
        self.worker = None

    def setup(self):
        subprocess.run([os.path.join(ROOT, "Tools/install-deps.sh")], check=True, stdout=subprocess.DEVNULL)
        print("perf: building shoal (release)...", flush=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "shoal"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        sh([os.path.join(ROOT, "Tools/objectstore.sh"), "start", self.objectstore, str(self.port)])
        self.env = dict(os.environ)
        for line in open(os.path.join(self.objectstore, "s3.env")):
            k, v = line.strip().split("=", 1)
            self.env[k] = v
        with open(os.path.join(self.work, "secret"), "w") as f:
            f.write(os.urandom(16).hex())
        self.env["SHOAL_SECRET_FILE"] = os.path.join(self.work, "secret")
        self.env["SHOAL_WORKERS"] = "127.0.0.1:18470"
        print(f"perf: populating {self.args.size} of 64 MiB objects...", flush=True)
        sh([self.shoal, "bench", "populate", "s3://perf/ds", "--size", self.args.size, "--object-size", "64MiB"], env=self.env)

    def teardown(self):
        self.stop_worker()
        subprocess.run([os.path.join(ROOT, "Tools/objectstore.sh"), "stop", self.objectstore], stdout=subprocess.DEVNULL)

    # -- limits --

    def fio(self, directory, qd):
        path = os.path.join(directory, "fio.dat")
        size = "1G" if not self.args.quick else "256M"
        out = sh(["fio", "--name=seq", f"--filename={path}", f"--size={size}", "--rw=read", f"--bs={BLOCK}",
                  "--ioengine=io_uring", "--direct=1", f"--iodepth={qd}", "--runtime=3", "--time_based",
                  "--output-format=json"])
        os.unlink(path)
        return json.loads(out)["jobs"][0]["read"]["bw_bytes"]

    def iperf3(self):
        server = subprocess.Popen(["iperf3", "-s", "-1", "-p", "18490", "-B", "127.0.0.1"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        try:
            out = json.loads(sh(["iperf3", "-c", "127.0.0.1", "-p", "18490", "-t", "3", "-J"]))
        finally:
            server.wait(timeout=10)
        return out["end"]["sum_received"]["bits_per_second"] / 8

    def fio_jobs(self, directory, size, jobs):
        """fio as the engine reads: `jobs` threads, each one 4 MiB read at a time."""
        path = os.path.join(directory, "fio-jobs.dat")
        out = sh(["fio", "--name=seq", f"--filename={path}", f"--size={size}", "--rw=read", f"--bs={BLOCK}",
                  "--ioengine=io_uring", "--direct=1", "--iodepth=1", f"--numjobs={jobs}", "--runtime=3", "--time_based",
                  "--group_reporting", "--output-format=json"])
        os.unlink(path)
        return json.loads(out)["jobs"][0]["read"]["bw_bytes"]

    def engine(self, directory, blocks, read_size, jobs):
        return json.loads(sh([self.shoal, "bench", "engine", "--dir", directory, "--blocks", str(blocks), "--read-size", read_size,
                              "--queue-depth", str(jobs), "--seconds", "3", "--json"]))

    def replay(self, directory, blocks):
        out = sh([self.shoal, "bench", "replay", "--dir", directory, "--dataset-blocks", str(blocks), "--epochs", "5", "--json"])
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def direct_get(self, concurrency):
        out = json.loads(sh([self.shoal, "bench", "get", "s3://perf/ds", "--concurrency", str(concurrency), "--json"], env=self.env))
        return out["bytesPerSecond"]

    # -- shoal --

    def start_worker(self, cache):
        os.makedirs(cache, exist_ok=True)
        config = os.path.join(self.work, "worker.yaml")
        with open(config, "w") as f:
            f.write(f"""listen: 127.0.0.1:18470
admin: 127.0.0.1:18471
secretFile: {self.env['SHOAL_SECRET_FILE']}
buffers: 32
caches:
  - path: {cache}
    capacity: {max(2 * parse_size(self.args.size), 1 << 30)}
stores:
  - name: default
    type: s3
    credentialsFile: {os.path.join(self.objectstore, 's3.env')}
""")
        self.worker = subprocess.Popen([self.shoal, "worker", "--config", config, "--log-level", "warning"],
                                       stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, "worker.log"), "a"))
        for _ in range(100):
            try:
                urllib.request.urlopen("http://127.0.0.1:18471/healthz", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("perf: worker did not start; see " + os.path.join(self.work, "worker.log"))

    def stop_worker(self):
        if self.worker:
            self.worker.send_signal(signal.SIGTERM)
            self.worker.wait(timeout=30)
            self.worker = None

    def shoal_read(self, label):
        out = json.loads(sh([self.shoal, "bench", "read", "s3://perf/ds", "--json", "--label", label,
                             "--connections", str(self.args.connections)], env=self.env))
        return out["bytesPerSecond"]


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer, smaller runs (under 2 minutes after the build)")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--size", default=None, help="dataset size (default 1GiB, 256MiB with --quick)")
    p.add_argument("--connections", type=int, default=8, help="client connections = read concurrency")
    p.add_argument("--out", default=os.path.join(ROOT, ".shoal/perf"))
    p.add_argument("--skip-engine", action="store_true", help="only the end-to-end figures")
    args = p.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.size = args.size or ("256MiB" if args.quick else "1GiB")

    run = Run(args)
    results = {}
    try:
        run.setup()
        samples = {k: [] for k in ["fio", "iperf3", "direct_get", "cold", "warm"]}
        for i in range(args.runs):
            print(f"perf: run {i + 1}/{args.runs}", flush=True)
            cache = os.path.join(run.work, f"cache-{i}")
            os.makedirs(cache)
            samples["fio"].append(run.fio(cache, args.connections))
            samples["iperf3"].append(run.iperf3())
            samples["direct_get"].append(run.direct_get(args.connections))
            run.start_worker(cache)
            samples["cold"].append(run.shoal_read("cold"))
            samples["warm"].append(run.shoal_read("warm"))
            run.stop_worker()
            shutil.rmtree(cache)
        results = {k: summary(v) for k, v in samples.items()}
        if not args.skip_engine:
            print("perf: engine alone (index DRAM, recovery, hit reads beside fio, trace replay)...", flush=True)
            edir = os.path.join(run.work, "engine")
            os.makedirs(edir)
            blocks = 100_000 if args.quick else 1_000_000
            hit, fio_hit, first = [], [], None
            for i in range(args.runs):
                fio_hit.append(run.fio_jobs(edir, "1G" if not args.quick else "256M", args.connections))
                e = run.engine(edir, blocks if i == 0 else 1000, "1GiB" if not args.quick else "256MiB", args.connections)
                first = first or e
                hit.append(e["hitReadBytesPerSecond"])
            results["engine_hit"] = summary(hit)
            results["fio_jobs"] = summary(fio_hit)
            engine_info = {"blocks": blocks, "indexBytesPerBlock": first["indexBytesPerBlock"],
                           "recoverCleanSeconds": first["recoverCleanSeconds"], "recoverUncleanSeconds": first["recoverUncleanSeconds"]}
            replay = run.replay(edir, 1024 if args.quick else 4096)
    finally:
        run.teardown()

    med = {k: v["median"] for k, v in results.items()}
    warm_limit = min(med["fio"], med["iperf3"])
    ratios = {
        "warm / min(fio, iperf3)": (med["warm"] / warm_limit, 0.8),
        "cold / direct GET": (med["cold"] / med["direct_get"], 0.9),
    }
    if not args.skip_engine:
        ratios["engine hit reads / fio (same jobs)"] = (med["engine_hit"] / med["fio_jobs"], 0.9)
    report = {"dataset": args.size, "blockSize": BLOCK, "connections": args.connections, "runs": args.runs,
              "figures": results, "ratios": {k: {"value": v, "goal": g} for k, (v, g) in ratios.items()}}
    if not args.skip_engine:
        report["engine"] = engine_info
        report["replay"] = replay
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)

    def gb(x):
        return f"{x / 1e9:.2f}"

    names = {"fio": f"limit: fio seq read (io_uring, O_DIRECT, 4 MiB, QD{args.connections})",
             "iperf3": "limit: iperf3 loopback", "direct_get": f"limit: direct ranged GETs ({args.connections} in flight)",
             "cold": "shoal: cold sequential read", "warm": "shoal: warm sequential read",
             "fio_jobs": f"limit: fio seq read (io_uring, O_DIRECT, 4 MiB, {args.connections} jobs × QD1)",
             "engine_hit": f"engine alone: hit reads (4 MiB, {args.connections} readers)"}
    lines = [f"# Shoal perf report\n", f"Dataset {args.size} of 64 MiB objects, 4 MiB blocks, one client with "
             f"{args.connections} connections; median of {args.runs} run(s).\n",
             "| figure | GB/s (median) | min-max |", "|---|---|---|"]
    for k in ["fio", "iperf3", "direct_get", "cold", "warm", "fio_jobs", "engine_hit"]:
        if k not in results:
            continue
        r = results[k]
        lines.append(f"| {names[k]} | {gb(r['median'])} | {gb(r['min'])}-{gb(r['max'])} |")
    lines += ["", "| ratio | value | goal |", "|---|---|---|"]
    for k, (v, g) in ratios.items():
        lines.append(f"| {k} | {v:.2f} | ≥ {g} |")
    if not args.skip_engine:
        lines += ["", f"Engine: {engine_info['blocks']} blocks cached: index DRAM {engine_info['indexBytesPerBlock']:.2f} bytes/block "
                  f"(goal ≤ 16); recovery {engine_info['recoverCleanSeconds']:.2f} s after a clean stop (snapshot), "
                  f"{engine_info['recoverUncleanSeconds']:.2f} s after an unclean one (footers, as after kill -9).", "",
                  "| trace | engine miss | + thrash guard | LRU miss | engine writes | + guard | LRU writes |", "|---|---|---|---|---|---|---|"]
        for r in replay:
            lines.append(f"| {r['trace']} | {r['engineMissRatio']:.3f} | {r['guardedMissRatio']:.3f} | {r['lruMissRatio']:.3f} | "
                         f"{r['engineBlocksWritten']} | {r['guardedBlocksWritten']} | {r['lruBlocksWritten']} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
