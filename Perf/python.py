#!/usr/bin/env python3
"""Python client figures, on this machine, each a ratio to a limit measured in the same run.

    .tools/venv/bin/python Perf/python.py [--size 512MiB] [--small 2000] [--runs 3] [--out DIR]

(run it with the interpreter the package is installed in: Tools/python.sh installs it into
.tools/venv; Tools/install-deps.sh --perf installs redis.)

- Python `readinto` throughput, warm, against the Swift client on the same dataset (goal >= 0.9):
  64 MiB objects, the dataset read 4 times over per measurement, two readers sharing the
  client's connections (8 per worker) on both sides; the Swift side is `shoal bench read` (its
  buffer advised to use huge pages), the Python side two threads calling `readinto` into a buffer
  of the object's size: `shoal.alloc_buffer` (the same kind of memory), and a plain bytearray for
  comparison.
- Small objects: 100 KiB objects per second through Python, warm, with 1 and 8 threads (each
  read is one object at its listed version, or by its URL alone: one round trip either way),
  and as batches of 64 (`read_batch`); against redis-benchmark GET of 100 KiB values at the same concurrency (goal
  >= 0.5), and against direct GETs of the same objects from SeaweedFS (`shoal bench get`, goal
  >= 5x).
- With torch installed: a map dataset of the 100 KiB objects under a DataLoader with 1, 2 and 4
  forked worker processes: samples per second through Shoal, warm, against the same dataset
  read from SeaweedFS directly (one GET per sample, by a dataset doing ranged GETs itself).

Starts its own cluster (Tools/cluster.sh, --workers workers (default three) with a 1 GiB DRAM
tier each, release build) and redis, and stops
them. Medians of --runs. Writes python-Nw.json and python-Nw.md to --out (default .shoal/perf).
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_PORT = 17570
REDIS_PORT = 17790
# The large dataset is read this many times per measurement on each side: one pass of 512 MiB
# takes a quarter of a second, too short to measure steadily on a shared machine.
PASSES = 4


def sh(cmd, env=None, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, **kw).stdout


def read_env(path):
    out = {}
    for line in open(path):
        k, _, v = line.strip().partition("=")
        if k and not k.startswith("#"):
            out[k] = v
    return out


def python_large(client, objects, readers, make_buffer=bytearray, passes=1):
    """Bytes per second: `readers` threads, each taking the next object and reading it whole
    with readinto into its own buffer (`make_buffer(size)`); the objects `passes` times over."""
    queue = list(objects) * passes
    lock = threading.Lock()
    total = [0]
    errors = []

    def reader():
        buf = make_buffer(max(o.size for o in objects))
        view = memoryview(buf)
        while True:
            with lock:
                if not queue:
                    return
                o = queue.pop()
            try:
                with client.open(o.url, version=o, read_ahead=False) as f:
                    n = f.readinto(view[:o.size])
                with lock:
                    total[0] += n
            except Exception as e:  # reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise SystemExit(f"python perf: a read failed: {errors[0]}")
    return total[0] / seconds


def python_small(client, objects, threads, batch=1, seconds=3.0):
    """Objects per second: `threads` threads reading objects (batches of `batch`) for `seconds`."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors = []

    def run(i):
        k = i * 997
        n = len(objects)
        while time.perf_counter() < stop:
            try:
                if batch == 0:  # by URL alone: the worker resolves the version
                    client.read(objects[k % n].url)
                    counts[i] += 1
                    k += 1
                elif batch == 1:
                    o = objects[k % n]
                    client.read(o.url, version=o)
                    counts[i] += 1
                    k += 1
                else:
                    chunk = [objects[(k + j) % n] for j in range(batch)]
                    client.read_batch([(o, 0, o.size) for o in chunk])
                    counts[i] += batch
                    k += batch
            except Exception as e:  # reported below
                errors.append(e)
                return

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"python perf: a read failed: {errors[0]}")
    return sum(counts) / (time.perf_counter() - start)


def start_redis(work, count, size):
    d = os.path.join(work, "redis")
    os.makedirs(d, exist_ok=True)
    sh(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes",
        "--dir", d, "--logfile", os.path.join(d, "redis.log"), "--pidfile", os.path.join(d, "redis.pid")])
    for _ in range(50):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    value = os.urandom(size // 2).hex().encode()
    cmds = []
    for i in range(count):
        k = b"key:%012d" % i
        cmds.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(value), value))
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "--pipe"], input=b"".join(cmds), check=True, capture_output=True)


def redis_get(count, size, concurrency):
    out = sh(["redis-benchmark", "-p", str(REDIS_PORT), "-t", "get", "-r", str(count), "-n", "20000", "-d", str(size),
              "-c", str(concurrency), "--csv"])
    row = [line for line in out.splitlines() if line.startswith('"GET"')][-1].replace('"', "").split(",")
    return float(row[1])


def dataloader_figures(settings, objects, env, runs):
    """Samples per second under a DataLoader (1, 2, 4 forked workers): Shoal warm, and SeaweedFS
    directly (a dataset whose __getitem__ GETs the object with SigV4 from the store)."""
    import torch.utils.data as tud

    sys.path.insert(0, os.path.join(ROOT, "python", "tests"))
    from s3util import Store

    from shoal.torch import ShoalMapDataset

    class DirectDataset(tud.Dataset):
        def __init__(self, objects):
            self.objects = objects
            self.store = Store(env["SHOAL_S3_ENDPOINT"], env["SHOAL_S3_ACCESS_KEY"], env["SHOAL_S3_SECRET_KEY"])

        def __len__(self):
            return len(self.objects)

        def __getitem__(self, i):
            bucket, _, key = self.objects[i].url[5:].partition("/")
            return self.store._request("GET", f"/{bucket}/{key}")

    shoal_ds = ShoalMapDataset(objects, settings=settings, transform=lambda s: s.data)
    direct_ds = DirectDataset(objects)
    out = {}
    for workers in (1, 2, 4):
        for name, ds in (("shoal", shoal_ds), ("direct", direct_ds)):
            rates = []
            for _ in range(runs):
                loader = tud.DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=list, multiprocessing_context="fork",
                                        persistent_workers=False)
                start = time.perf_counter()
                n = sum(len(b) for b in loader)
                rates.append(n / (time.perf_counter() - start))
            out[f"{name}.{workers}"] = statistics.median(rates)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512MiB")
    ap.add_argument("--small", type=int, default=2000, help="how many 100 KiB objects")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3, help="workers in the cluster (1: one process against redis's one)")
    ap.add_argument("--out", default=os.path.join(ROOT, ".shoal", "perf"))
    args = ap.parse_args()
    for name in ("small", "runs", "workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    import shoal

    work = os.path.join(ROOT, ".shoal", "perf-python")
    sh(["swift", "build", "-c", "release", "--product", "shoal"], cwd=ROOT)
    shoal_bin = os.path.join(ROOT, ".build", "release", "shoal")
    subprocess.run([os.path.join(ROOT, "Tools", "cluster.sh"), "stop", "--dir", work], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)  # nothing cached or stored from an earlier run
    sh([os.path.join(ROOT, "Tools", "cluster.sh"), "start", "--workers", str(args.workers), "--dir", work, "--port", str(BASE_PORT), "--capacity", "4GiB",
        "--memory-tier", "1GiB"],
       env=dict(os.environ, SHOAL_BIN=shoal_bin))
    env = dict(os.environ, **read_env(os.path.join(work, "cluster.env")))
    settings = {"etcd": env["SHOAL_ETCD"], "etcd_credentials_file": env["SHOAL_ETCD_CREDENTIALS_FILE"], "secret_file": env["SHOAL_SECRET_FILE"],
                "connections": 8}
    results = {}
    try:
        sh([shoal_bin, "bench", "populate", "s3://pyperf/large", "--size", args.size, "--object-size", "64MiB"], env=env)
        sh([shoal_bin, "bench", "populate", "s3://pyperf/small", "--size", str(args.small * 102400), "--object-size", "100KiB"], env=env)
        client = shoal.Client(**settings)
        large = client.list("s3://pyperf/large/")
        small = client.list("s3://pyperf/small/")
        python_large(client, large, 2)  # cold: fills
        python_small(client, small, 8, batch=64, seconds=0.1)
        client.read_batch([(o, 0, o.size) for o in small])  # every small object warm
        for o in small:
            client.read(o.url)  # and its version in its metadata owner's cache (the TTL is 60 s)
        swift, py, plain = [], [], []
        for _ in range(args.runs):
            r = json.loads(sh([shoal_bin, "bench", "read", "s3://pyperf/large", "--readers", "2", "--connections", "8", "--passes", str(PASSES),
                               "--json"], env=env))
            swift.append(r["bytesPerSecond"])
            py.append(python_large(client, large, 2, shoal.alloc_buffer, PASSES))
            plain.append(python_large(client, large, 2, bytearray, PASSES))
        results["runs"] = {"large.swift": swift, "large.python": py, "large.bytearray": plain}
        results["large"] = {"swiftBytesPerSecond": statistics.median(swift), "pythonBytesPerSecond": statistics.median(py),
                            "pythonBytearrayBytesPerSecond": statistics.median(plain)}
        start_redis(work, min(args.small, 2000), 102400)
        for threads in (1, 8):
            rates = {"python": [], "byurl": [], "batch": [], "redis": [], "direct": []}
            for _ in range(args.runs):
                rates["python"].append(python_small(client, small, threads))
                for o in small:
                    client.read(o.url)  # versions fresh in the metadata owners' caches (their TTL is 60 s)
                rates["byurl"].append(python_small(client, small, threads, batch=0))
                rates["batch"].append(python_small(client, small, threads, batch=64))
                rates["redis"].append(redis_get(min(args.small, 2000), 102400, threads))
                r = json.loads(sh([shoal_bin, "bench", "get", "s3://pyperf/small", "--block-size", "100KiB", "--concurrency", str(threads),
                                   "--json"], env=env))
                rates["direct"].append(r["bytesPerSecond"] / 102400)
            results[f"small.{threads}"] = {k: statistics.median(v) for k, v in rates.items()}
            results["runs"].update({f"small.{threads}.{k}": v for k, v in rates.items()})
        if importlib.util.find_spec("torch") is not None:
            results["dataloader"] = dataloader_figures(settings, small[:1000], env, args.runs)
        client.close()
    finally:
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True)
        subprocess.run([os.path.join(ROOT, "Tools", "cluster.sh"), "stop", "--dir", work], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)  # preallocated caches and the store's data: gigabytes
    os.makedirs(args.out, exist_ok=True)
    results["workers"] = args.workers
    with open(os.path.join(args.out, f"python-{args.workers}w.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"{args.workers} worker(s)", "", "| figure | Shoal | limit | ratio | goal |", "|---|---|---|---|---|"]
    lg = results["large"]
    lines.append(f"| Python readinto into shoal.alloc_buffer, warm, 64 MiB objects (GB/s) / Swift client | {lg['pythonBytesPerSecond'] / 1e9:.2f} | "
                 f"{lg['swiftBytesPerSecond'] / 1e9:.2f} | {lg['pythonBytesPerSecond'] / lg['swiftBytesPerSecond']:.2f} | >= 0.9 |")
    lines.append(f"| the same into a bytearray (4 KiB pages) / Swift client | {lg['pythonBytearrayBytesPerSecond'] / 1e9:.2f} | "
                 f"{lg['swiftBytesPerSecond'] / 1e9:.2f} | {lg['pythonBytearrayBytesPerSecond'] / lg['swiftBytesPerSecond']:.2f} | |")
    for threads in (1, 8):
        s = results[f"small.{threads}"]
        for kind, label in (("python", "one read per listed object"), ("byurl", "one read per URL"), ("batch", "read_batch of 64")):
            lines.append(f"| 100 KiB objects/s, {threads} thread(s), {label} / redis GET | {s[kind]:.0f} | {s['redis']:.0f} | {s[kind] / s['redis']:.2f} | >= 0.5 |")
            lines.append(f"| 100 KiB objects/s, {threads} thread(s), {label} / SeaweedFS GET | {s[kind]:.0f} | {s['direct']:.0f} | {s[kind] / s['direct']:.1f} | >= 5 |")
    if "dataloader" in results:
        d = results["dataloader"]
        for w in (1, 2, 4):
            lines.append(f"| DataLoader, {w} worker(s), samples/s / SeaweedFS directly | {d[f'shoal.{w}']:.0f} | {d[f'direct.{w}']:.0f} | "
                         f"{d[f'shoal.{w}'] / d[f'direct.{w}']:.1f} | |")
    else:
        lines.append("| DataLoader | not measured: torch is not installed (Tools/test.sh --torch installs it) | | | |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, f"python-{args.workers}w.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
