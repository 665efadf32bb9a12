#!/usr/bin/env python3
"""Shoal beside its limits and its peers, measured in one run on one machine.

    python3 Perf/run.py [--quick] [--runs N] [--size 1GiB] [--out DIR] [--skip-engine]

Limits: fio (io_uring, O_DIRECT) on the cache folder's disk; iperf3 on loopback; direct ranged
GETs from the same SeaweedFS at the same concurrency.
Peers: redis-benchmark GET against redis-server (4 KiB and 64 KiB values, same concurrencies as
Shoal's random reads); nginx serving the dataset's 4 MiB blocks as files, with `directio`
(O_DIRECT, like Shoal's disk path) and from the page cache, read by wrk over every file.
Shoal: cold and warm sequential reads (4 MiB blocks), warm random reads of 4 KiB, 64 KiB and
4 MiB at several concurrencies (ops/s, p50, p99), restart recovery after a clean and an unclean
stop, CPU seconds per GB on worker and client, and the isolating switches (serve from memory,
answer without data) that split a figure into disk, network and the rest.
The channel: warm sequential reads with frames untagged (a benchmark switch on both sides),
tagged under the session key (the default on TCP), and over TLS 1.3 (user-space TLS where the
kernel has no TLS module), as ratios to the untagged figure.
Each figure is the median of --runs runs (min-max shown); ratios are against figures from the
same run. Writes report.json, report.md and report.png to --out (default .shoal/perf).
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 4 << 20
TICKS = os.sysconf("SC_CLK_TCK")
PORTS = {"store": 18500, "worker": 18470, "iperf3": 18490, "redis": 18600, "nginx_direct": 18610, "nginx_cache": 18611}


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def parse_size(s):
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return int(float(num) * units[s[len(num):].lower()])


def cpu_seconds(pid):
    """utime + stime of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Run:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.work = os.path.join(self.out, "work")
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.shoal = os.path.join(ROOT, ".build/release/shoal")
        self.objectstore = os.path.join(self.work, "objectstore")
        self.worker = None
        self.peers = []
        # How each limit and peer was configured in this run, for the report.
        self.limits = {}

    # -- set-up --

    def setup(self):
        print("perf: building shoal (release)...", flush=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "shoal"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        sh([os.path.join(ROOT, "Tools/objectstore.sh"), "start", self.objectstore, str(PORTS["store"])])
        self.env = dict(os.environ)
        for line in open(os.path.join(self.objectstore, "s3.env")):
            k, v = line.strip().split("=", 1)
            self.env[k] = v
        # Private from the start: a worker refuses a secret file that group or others can read.
        secret = os.path.join(self.work, "secret")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(os.urandom(16).hex())
        os.chmod(secret, 0o600)
        self.env["SHOAL_SECRET_FILE"] = os.path.join(self.work, "secret")
        self.env["SHOAL_WORKERS"] = f"127.0.0.1:{PORTS['worker']}"
        for name in ("SHOAL_MEMBERS_FILE", "SHOAL_ETCD"):  # a sourced cluster.env's would route elsewhere
            self.env.pop(name, None)
        self.make_certificates()
        print(f"perf: populating {self.args.size} of 64 MiB objects...", flush=True)
        sh([self.shoal, "bench", "populate", "s3://perf/ds", "--size", self.args.size, "--object-size", "64MiB"], env=self.env)

    def make_certificates(self):
        """A throwaway CA and a worker certificate for 127.0.0.1, for the TLS figures."""
        d = os.path.join(self.work, "tls")
        os.makedirs(d)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        sh(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=shoal-perf-ca", "-keyout", "ca.key", "-out", "ca.pem"], cwd=d)
        sh(["openssl", "req", *ec, "-subj", "/CN=shoal-worker", "-keyout", "worker.key", "-out", "worker.csr"], cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        sh(["openssl", "x509", "-req", "-in", "worker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "ext.cnf", "-out", "worker.pem"], cwd=d)
        self.tls_worker = ["--tls-cert", os.path.join(d, "worker.pem"), "--tls-key", os.path.join(d, "worker.key")]
        self.tls_client = ["--tls-ca", os.path.join(d, "ca.pem")]

    def teardown(self):
        self.stop_worker()
        for stop in self.peers:
            subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([os.path.join(ROOT, "Tools/objectstore.sh"), "stop", self.objectstore], stdout=subprocess.DEVNULL)

    # -- limits --

    def hugepages(self, count):
        """Explicit 2 MiB huge pages for fio's buffers (root only); True if `count` are there."""
        path = "/proc/sys/vm/nr_hugepages"
        try:
            have = int(open(path).read())
            if have < count and os.getuid() == 0:
                with open(path, "w") as f:
                    f.write(str(count))
                have = int(open(path).read())
            return have >= count
        except OSError:
            return False

    def fio_memory(self, buffers):
        """fio as its experts run it: buffers registered with io_uring (fixedbufs) and the file
        registered too, in explicit huge pages where the host has them."""
        opts = ["--fixedbufs", "--registerfiles"]
        if self.hugepages(buffers * BLOCK // (2 << 20) + 16):
            self.limits["fio memory"] = "explicit 2 MiB huge pages (shmhuge), registered (fixedbufs, registerfiles)"
            return opts + ["--iomem=shmhuge"]
        self.limits["fio memory"] = "4 KiB pages (no huge pages could be reserved), registered (fixedbufs, registerfiles)"
        return opts + ["--iomem=malloc"]

    def fio(self, directory, qd):
        path = os.path.join(directory, "fio.dat")
        size = "1G" if not self.args.quick else "256M"
        out = sh(["fio", "--name=seq", f"--filename={path}", f"--size={size}", "--rw=read", f"--bs={BLOCK}",
                  "--ioengine=io_uring", "--direct=1", f"--iodepth={qd}", "--runtime=3", "--time_based",
                  *self.fio_memory(qd), "--output-format=json"])
        os.unlink(path)
        return json.loads(out)["jobs"][0]["read"]["bw_bytes"]

    def iperf3(self, streams):
        """Loopback TCP with as many streams as Shoal has connections: bytes/s, and the CPU seconds
        per GB of both ends (sender and receiver, from wait4 as for Shoal's client)."""
        server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(PORTS["iperf3"]), "-B", "127.0.0.1"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        client = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(PORTS["iperf3"]), "-t", "3", "-P", str(streams), "-J"],
                                  stdout=subprocess.PIPE, text=True)
        out = json.loads(client.stdout.read())
        _, _, client_usage = os.wait4(client.pid, 0)
        _, _, server_usage = os.wait4(server.pid, 0)
        received = out["end"]["sum_received"]
        cpu = sum(u.ru_utime + u.ru_stime for u in (client_usage, server_usage))
        self.limits["iperf3"] = f"loopback, {streams} parallel streams (-P {streams}), CPU of sender and receiver"
        self.limits["shoal worker"] = ("1 io shard (the client shares this machine's cores; on 2 cores, 2 shards beside the client "
                                      "served 4 KiB reads slower), 32 I/O buffers, 16 fill threads")
        return received["bits_per_second"] / 8, cpu / (received["bytes"] / 1e9)

    def fio_jobs(self, directory, size, jobs):
        """fio as the engine reads: `jobs` threads, each one 4 MiB read at a time, each over its
        own part of the file (offset_increment), so no two read the same offsets."""
        path = os.path.join(directory, "fio-jobs.dat")
        part = parse_size(size) // jobs // BLOCK * BLOCK
        out = sh(["fio", "--name=seq", f"--filename={path}", f"--size={part}", f"--offset_increment={part}", "--rw=read",
                  f"--bs={BLOCK}", "--ioengine=io_uring", "--direct=1", "--iodepth=1", f"--numjobs={jobs}", "--runtime=3",
                  "--time_based", *self.fio_memory(jobs), "--group_reporting", "--output-format=json"])
        os.unlink(path)
        return json.loads(out)["jobs"][0]["read"]["bw_bytes"]

    def direct_get(self, concurrency):
        out = json.loads(sh([self.shoal, "bench", "get", "s3://perf/ds", "--concurrency", str(concurrency), "--json"], env=self.env))
        return out["bytesPerSecond"]

    # -- peers --

    def start_redis(self):
        """redis-server on loopback, holding the keys redis-benchmark asks for: 4 KiB values in
        db 0, 64 KiB values in db 1."""
        d = os.path.join(self.work, "redis")
        os.makedirs(d)
        sh(["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "yes", "--dir", d, "--logfile", os.path.join(d, "redis.log"), "--pidfile", os.path.join(d, "redis.pid")])
        self.peers.append(["redis-cli", "-p", str(PORTS["redis"]), "shutdown", "nosave"])
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(PORTS["redis"]), "ping"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        for db, (size, keys) in enumerate([(4096, self.redis_keys(4096)), (65536, self.redis_keys(65536))]):
            value = os.urandom(size // 2).hex().encode()
            cmds = [b"*2\r\n$6\r\nSELECT\r\n$1\r\n" + str(db).encode() + b"\r\n"]
            for i in range(keys):
                k = b"key:%012d" % i
                cmds.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(value), value))
            subprocess.run(["redis-cli", "-p", str(PORTS["redis"]), "--pipe"], input=b"".join(cmds), check=True, capture_output=True)

    def redis_keys(self, size):
        return min(parse_size(self.args.size) // size, 65536)

    def redis_get(self, size, concurrency):
        """redis-benchmark GET of random existing keys: ops/s, p50 and p99 in µs."""
        db = 0 if size == 4096 else 1
        n = 40000 if size == 4096 else 15000
        if self.args.quick:
            n //= 2
        out = sh(["redis-benchmark", "-p", str(PORTS["redis"]), "--dbnum", str(db), "-t", "get", "-r", str(self.redis_keys(size)),
                  "-n", str(n), "-d", str(size), "-c", str(concurrency), "--csv"])
        row = [line for line in out.splitlines() if line.startswith('"GET"')][-1].replace('"', "").split(",")
        return {"opsPerSecond": float(row[1]), "p50Micros": float(row[4]) * 1000, "p99Micros": float(row[6]) * 1000}

    def start_nginx(self):
        """nginx serving the dataset cut into 4 MiB block files, on two ports: with directio
        (O_DIRECT reads into 4 MiB buffers) and from the page cache (sendfile)."""
        d = os.path.join(self.work, "nginx")
        blocks = os.path.join(d, "blocks")
        os.makedirs(blocks)
        count = parse_size(self.args.size) // BLOCK
        for i in range(count):
            with open(os.path.join(blocks, f"b{i:05d}"), "wb") as f:
                f.write(os.urandom(BLOCK))
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes {self.args.connections};
{"user root;" if os.getuid() == 0 else ""}
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    default_type application/octet-stream;
    sendfile on;
    output_buffers 1 4m;
    server {{ listen 127.0.0.1:{PORTS['nginx_direct']}; root {blocks}; directio 4k; directio_alignment 4k; aio threads; }}
    server {{ listen 127.0.0.1:{PORTS['nginx_cache']}; root {blocks}; }}
}}
""")
        os.makedirs(os.path.join(d, "tmp"))
        sh(["nginx", "-c", conf, "-p", d])
        self.limits["nginx"] = (f"{self.args.connections} worker processes (one per Shoal connection), 4 MiB output buffers; "
                                "directio server: O_DIRECT reads on a thread pool (aio threads); page-cache server: sendfile")
        self.peers.append(["nginx", "-c", conf, "-p", d, "-s", "stop"])
        with open(os.path.join(d, "random.lua"), "w") as f:
            f.write(f"""local files = {count}
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n) end
init = function(args) math.randomseed(seed * 7919) end
request = function() return wrk.format("GET", string.format("/b%05d", math.random(0, files - 1))) end
done = function(summary, latency, requests)
  io.write(string.format('{{"requests":%d,"bytes":%d,"seconds":%f,"p50Micros":%f,"p99Micros":%f,"errors":%d}}\\n',
    summary.requests, summary.bytes, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.read + summary.errors.connect + summary.errors.timeout))
end
""")
        self.wrk_script = os.path.join(d, "random.lua")
        # The page-cache server's files are read once so they are in the page cache.
        for i in range(count):
            with open(os.path.join(blocks, f"b{i:05d}"), "rb") as f:
                f.read()

    def wrk(self, port, concurrency):
        out = sh(["wrk", "-t", "2", "-c", str(concurrency), "-d", "2s" if self.args.quick else "3s", "-s", self.wrk_script,
                  f"http://127.0.0.1:{port}/"])
        r = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        if r["errors"]:
            raise SystemExit(f"perf: wrk saw {r['errors']} errors from nginx on port {port}")
        return {"bytesPerSecond": r["bytes"] / r["seconds"], "opsPerSecond": r["requests"] / r["seconds"],
                "p50Micros": r["p50Micros"], "p99Micros": r["p99Micros"]}

    # -- shoal --

    def start_worker(self, cache, extra=(), tier=0, zero_copy=False):
        """A worker on `cache`; `tier` bytes of DRAM tier (0: every warm read goes to the disk)."""
        os.makedirs(cache, exist_ok=True)
        config = os.path.join(self.work, "worker.yaml")
        with open(config, "w") as f:
            f.write(f"""listen: 127.0.0.1:{PORTS['worker']}
admin: 127.0.0.1:{PORTS['worker'] + 1}
secretFile: {self.env['SHOAL_SECRET_FILE']}
buffers: 32
shards: 1
memoryTier: {tier}
sendZeroCopy: {"true" if zero_copy else "false"}
caches:
  - path: {cache}
    capacity: {max(2 * parse_size(self.args.size), 1 << 30) + 3 * (256 << 20)}
stores:
  - name: default
    type: s3
    credentialsFile: {os.path.join(self.objectstore, 's3.env')}
""")
        start = time.monotonic()
        self.worker = subprocess.Popen([self.shoal, "worker", "--config", config, "--log-level", "warning", *extra],
                                       stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, "worker.log"), "a"))
        for _ in range(1000):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORTS['worker'] + 1}/healthz", timeout=1)
                return time.monotonic() - start
            except Exception:
                time.sleep(0.005)
        raise SystemExit("perf: worker did not start; see " + os.path.join(self.work, "worker.log"))

    def worker_status(self):
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{PORTS['worker'] + 1}/status", timeout=5).read())

    def stop_worker(self, kill=False):
        if self.worker:
            self.worker.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.worker.wait(timeout=30)
            self.worker = None

    def client(self, args):
        """Runs a shoal client command: its JSON, its CPU seconds, the worker's CPU seconds."""
        before = cpu_seconds(self.worker.pid)
        p = subprocess.Popen([self.shoal, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        out = p.stdout.read()
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        if status != 0:
            raise SystemExit(f"perf: shoal {' '.join(args)} failed: {err.strip()}")
        worker_cpu = cpu_seconds(self.worker.pid) - before
        return json.loads(out), usage.ru_utime + usage.ru_stime, worker_cpu

    def shoal_read(self, extra=()):
        """Sequential reads by two readers sharing `connections` connections, so the end of one
        64 MiB read never leaves the connections idle."""
        readers = 2 if self.args.connections >= 2 else 1
        r, client_cpu, worker_cpu = self.client(["bench", "read", "s3://perf/ds", "--readers", str(readers),
                                                 "--connections", str(self.args.connections // readers), *extra])
        gb = r["bytes"] / 1e9
        return r["bytesPerSecond"], client_cpu / gb, worker_cpu / gb

    def shoal_random(self, size, concurrency, extra=()):
        r, _, _ = self.client(["bench", "random", "s3://perf/ds", "--read-size", str(size), "--concurrency", str(concurrency),
                               "--seconds", "1.5" if self.args.quick else "2", *extra])
        return {"opsPerSecond": r["opsPerSecond"], "bytesPerSecond": r["bytesPerSecond"], "p50Micros": r["p50Micros"], "p99Micros": r["p99Micros"]}

    # -- per-request costs --

    EVENTS = "raw_syscalls:sys_enter,context-switches"

    @staticmethod
    def perf_counts(text):
        """{event: count} from `perf stat -x,` output."""
        counts = {}
        for line in text.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].strip().isdigit():
                counts[parts[2]] = int(parts[0])
        return counts

    def counted(self, server_pid, cmd, env=None):
        """Runs `cmd` under `perf stat` while another `perf stat` counts `server_pid`: the command's
        stdout, its counts, the server's counts (syscalls and context switches, all threads)."""
        attached = subprocess.Popen(["perf", "stat", "-x,", "-e", self.EVENTS, "-p", str(server_pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        out_file = os.path.join(self.work, "perf-client.txt")
        out = sh(["perf", "stat", "-x,", "-e", self.EVENTS, "-o", out_file, "--", *cmd], env=env)
        attached.send_signal(signal.SIGINT)
        server = self.perf_counts(attached.stderr.read())
        attached.wait()
        return out, self.perf_counts(open(out_file).read()), server

    def shoal_costs(self, concurrency):
        """Syscalls and context switches per 4 KiB read on each side (perf stat)."""
        cmd = [self.shoal, "bench", "random", "s3://perf/ds", "--read-size", "4096", "--concurrency", str(concurrency), "--seconds", "2", "--json"]
        out, client, worker = self.counted(self.worker.pid, cmd, env=self.env)
        ops = json.loads(out)["ops"]
        return {"workerSyscalls": worker.get("raw_syscalls:sys_enter", 0) / ops, "workerSwitches": worker.get("context-switches", 0) / ops,
                "clientSyscalls": client.get("raw_syscalls:sys_enter", 0) / ops, "clientSwitches": client.get("context-switches", 0) / ops}

    def redis_costs(self, concurrency):
        pid = int(open(os.path.join(self.work, "redis", "redis.pid")).read())
        n = 40000
        cmd = ["redis-benchmark", "-p", str(PORTS["redis"]), "--dbnum", "0", "-t", "get", "-r", str(self.redis_keys(4096)),
               "-n", str(n), "-d", "4096", "-c", str(concurrency), "--csv"]
        _, client, server = self.counted(pid, cmd)
        return {"workerSyscalls": server.get("raw_syscalls:sys_enter", 0) / n, "workerSwitches": server.get("context-switches", 0) / n,
                "clientSyscalls": client.get("raw_syscalls:sys_enter", 0) / n, "clientSwitches": client.get("context-switches", 0) / n}

    def hold(self, connections, active):
        """The worker's resident memory and threads with `connections` open, `active` of them reading."""
        def status():
            fields = dict(line.split(":", 1) for line in open(f"/proc/{self.worker.pid}/status"))
            return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"])
        rss0, threads0 = status()
        p = subprocess.Popen([self.shoal, "bench", "hold", "s3://perf/ds", "--connections", str(connections), "--active", str(active),
                              "--seconds", "3", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        peak = (rss0, threads0)
        while p.poll() is None:
            try:
                if self.worker_status()["connections"] >= connections:
                    peak = max(peak, status())
            except Exception:
                pass
            time.sleep(0.2)
        if p.returncode != 0:
            raise SystemExit(f"perf: shoal bench hold failed: {p.stderr.read().strip()}")
        return {"rssBeforeMiB": rss0 / 2**20, "rssMiB": peak[0] / 2**20, "threadsBefore": threads0, "threads": peak[1]}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


class Samples:
    """Figures by name, one value per run."""

    def __init__(self):
        self.values = {}

    def add(self, name, value):
        self.values.setdefault(name, []).append(value)

    def add_all(self, prefix, d):
        for k, v in d.items():
            self.add(f"{prefix}.{k}", v)

    def summaries(self):
        return {k: summary(v) for k, v in self.values.items()}


def measure(run, args):
    s = Samples()
    small = [4096, 65536]
    for i in range(args.runs):
        print(f"perf: run {i + 1}/{args.runs}", flush=True)
        cache = os.path.join(run.work, f"cache-{i}")
        os.makedirs(cache)
        s.add("fio", run.fio(cache, args.connections))
        bw, cpu = run.iperf3(args.connections)
        s.add("iperf3", bw)
        s.add("iperf3.cpuPerGB", cpu)
        s.add("direct_get", run.direct_get(args.connections))
        for size in small:
            for c in args.concurrency:
                s.add_all(f"redis.{size}.{c}", run.redis_get(size, c))
        s.add_all("nginx_direct", run.wrk(PORTS["nginx_direct"], args.connections))
        s.add_all("nginx_cache", run.wrk(PORTS["nginx_cache"], args.connections))

        run.start_worker(cache)
        bw, client_cpu, worker_cpu = run.shoal_read()
        s.add("cold", bw)
        # Filled blocks are written to the cache after their replies: wait for the last ones.
        for _ in range(100):
            if run.worker_status()["fillsInFlight"] == 0:
                break
            time.sleep(0.05)
        # A warm figure means something only if the cold read left every block cached.
        s.add("cold.blocksCached", run.worker_status()["blocks"] / (parse_size(args.size) // BLOCK))
        s.add("cold.clientCpuPerGB", client_cpu)
        s.add("cold.workerCpuPerGB", worker_cpu)
        bw, client_cpu, worker_cpu = run.shoal_read()
        s.add("warm", bw)
        s.add("warm.clientCpuPerGB", client_cpu)
        s.add("warm.workerCpuPerGB", worker_cpu)
        s.add("warm.cpuPerGB", worker_cpu + client_cpu)
        for size in small:
            for c in args.concurrency:
                s.add_all(f"random.{size}.{c}", run.shoal_random(size, c))
        s.add_all("random.4194304", run.shoal_random(BLOCK, args.connections))
        s.add_all("costs.shoal", run.shoal_costs(args.connections))
        s.add_all("costs.redis", run.redis_costs(args.connections))
        s.add_all("hold", run.hold(1000, 100))
        blocks = run.worker_status()["blocks"]
        run.stop_worker()
        s.add("restart.clean", run.start_worker(cache))
        s.add("restart.blocksKept", run.worker_status()["blocks"] / max(blocks, 1))
        run.stop_worker(kill=True)
        s.add("restart.unclean", run.start_worker(cache))
        s.add("restart.blocksKeptUnclean", run.worker_status()["blocks"] / max(blocks, 1))
        run.stop_worker()

        # The DRAM tier, sized to hold the dataset: the second read makes blocks hot, the third
        # loads them, and the figures are read from memory.
        tier = parse_size(args.size) * 9 // 8 + (64 << 20)
        run.start_worker(cache, tier=tier)
        for _ in range(3):
            run.shoal_read()
        s.add("tier.warm", run.shoal_read()[0])
        for c in args.concurrency:
            s.add_all(f"tier.random.4096.{c}", run.shoal_random(4096, c))
        s.add("tier.resident", run.worker_status()["memoryTier"]["resident"] / (parse_size(args.size) // BLOCK))
        run.stop_worker()
        # The same with replies sent by SENDMSG_ZC (does zero copy pay here?).
        run.start_worker(cache, tier=tier, zero_copy=True)
        for _ in range(3):
            run.shoal_read()
        s.add("tier.warmZeroCopy", run.shoal_read()[0])
        run.stop_worker()

        # Isolating switches: the same reads without the disk, then without sending the data.
        run.start_worker(cache, ["--serve-from-memory"], tier=tier)
        run.shoal_read()
        s.add("memory.warm", run.shoal_read()[0])
        s.add_all("memory.random.4096", run.shoal_random(4096, args.connections))
        run.stop_worker()
        run.start_worker(cache, ["--answer-without-data"])
        s.add("nodata.warm", run.shoal_read(["--accept-no-data"])[0])
        s.add_all("nodata.random.4096", run.shoal_random(4096, args.connections, ["--accept-no-data"]))
        run.stop_worker()

        # The channel, on the warm cache: untagged frames (both sides opt in to the benchmark
        # switch), tagged ones (the default), then TLS. Three reads each, interleaved, so that
        # drift on a shared machine falls on all of them alike; the median of the three is kept.
        run.start_worker(cache, ["--allow-untagged-frames"])
        run.shoal_read()
        plain, tagged = [], []
        for _ in range(3):
            plain.append(run.shoal_read(["--untagged-frames"]))
            tagged.append(run.shoal_read())
        run.stop_worker()
        run.start_worker(cache, run.tls_worker)
        run.shoal_read(run.tls_client)
        tls = [run.shoal_read(run.tls_client) for _ in range(3)]
        run.stop_worker()
        for name, reads in [("plain", plain), ("tagged", tagged), ("tls", tls)]:
            s.add(f"channel.{name}.warm", statistics.median(r[0] for r in reads))
            s.add(f"channel.{name}.workerCpuPerGB", statistics.median(r[2] for r in reads))
            s.add(f"channel.{name}.clientCpuPerGB", statistics.median(r[1] for r in reads))
        shutil.rmtree(cache)
    return s.summaries()


def measure_engine(run, args):
    print("perf: engine alone (index DRAM, recovery, hit reads beside fio, trace replay)...", flush=True)
    edir = os.path.join(run.work, "engine")
    os.makedirs(edir)
    blocks = 100_000 if args.quick else 1_000_000
    hit, fio_hit, first = [], [], None
    for i in range(args.runs):
        fio_hit.append(run.fio_jobs(edir, "1G" if not args.quick else "256M", args.connections))
        e = json.loads(sh([run.shoal, "bench", "engine", "--dir", edir, "--blocks", str(blocks if i == 0 else 1000),
                           "--read-size", "1GiB" if not args.quick else "256MiB", "--queue-depth", str(args.connections),
                           "--seconds", "3", "--json"]))
        first = first or e
        hit.append(e["hitReadBytesPerSecond"])
    out = sh([run.shoal, "bench", "replay", "--dir", edir, "--dataset-blocks", str(1024 if args.quick else 4096), "--epochs", "5", "--json"])
    print("perf: placement (balance, slots moved, build and lookup time)...", flush=True)
    placement = sh([run.shoal, "bench", "placement", "--members", "10,100" if args.quick else "10,100,1000", "--json"])
    return {"engine_hit": summary(hit), "fio_jobs": summary(fio_hit)}, {
        "blocks": blocks, "indexBytesPerBlock": first["indexBytesPerBlock"], "recoverCleanSeconds": first["recoverCleanSeconds"],
        "recoverUncleanSeconds": first["recoverUncleanSeconds"],
        "placement": [json.loads(line) for line in placement.splitlines() if line.strip()]}, [json.loads(line) for line in out.splitlines() if line.strip()]


def machine():
    """The machine and its load at the time of the report, in one line."""
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return f"{os.cpu_count()} cores ({model}), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def report(args, f, engine, replay, limits):
    med = {k: v["median"] for k, v in f.items()}
    c = args.connections
    ratios = [
        ("warm sequential (disk) / min(fio, iperf3)", med["warm"] / min(med["fio"], med["iperf3"]), 0.9),
        (f"warm 4 MiB reads (disk) / nginx directio, {c} clients", med["random.4194304.bytesPerSecond"] / med["nginx_direct.bytesPerSecond"], 1.0),
        ("warm sequential (DRAM tier) / nginx page cache", med["tier.warm"] / med["nginx_cache.bytesPerSecond"], 1.0),
        ("warm sequential served from memory / iperf3", med["memory.warm"] / med["iperf3"], 0.9),
    ]
    for cc in args.concurrency:
        ratios.append((f"warm 4 KiB reads (disk) / redis GET, {cc} clients",
                       med[f"random.4096.{cc}.opsPerSecond"] / med[f"redis.4096.{cc}.opsPerSecond"], 0.8))
    for cc in args.concurrency:
        ratios.append((f"warm 4 KiB reads (DRAM tier) / redis GET, {cc} clients",
                       med[f"tier.random.4096.{cc}.opsPerSecond"] / med[f"redis.4096.{cc}.opsPerSecond"], 1.0))
    ratios.append(("cold / direct GETs", med["cold"] / med["direct_get"], 0.9))
    # (name, value, goal, "max" when lower is better)
    ratios = [(n, v, g, "min") for n, v, g in ratios]
    ratios.append(("CPU per GB, warm: (worker + client) / (iperf3 sender + receiver)", med["warm.cpuPerGB"] / med["iperf3.cpuPerGB"], 1.0, "max"))
    if engine:
        ratios.append((f"engine hit reads / fio ({c} jobs)", med["engine_hit"] / med["fio_jobs"], 0.9, "min"))
        for pc in engine["placement"]:
            if pc["members"] == 100:
                ratios.append((f"placement max/mean slots, 100 members, {pc['weights']} weights", pc["balanceMaxOverMean"], 1.05, "max"))
    ratios.append(("warm sequential, tagged frames / untagged", med["channel.tagged.warm"] / med["channel.plain.warm"], 0.9, "min"))

    def gb(x):
        return f"{x / 1e9:.2f}"

    def row(name, key, fmt=gb, unit=""):
        r = f[key]
        return f"| {name} | {fmt(r['median'])}{unit} | {fmt(r['min'])}–{fmt(r['max'])} |"

    lines = ["# Shoal perf report", "",
             f"Dataset {args.size} of 64 MiB objects, 4 MiB blocks, one worker and one client on one machine; "
             f"median of {args.runs} run(s), min–max beside it. `python3 Perf/run.py{' --quick' if args.quick else ''}`.", "",
             "## Throughput (GB/s)", "", "| figure | median | min–max |", "|---|---|---|",
             row(f"limit: fio seq read (io_uring, O_DIRECT, 4 MiB, QD{c})", "fio"),
             row("limit: iperf3 loopback", "iperf3"),
             row(f"limit: direct ranged GETs from SeaweedFS ({c} in flight)", "direct_get"),
             row("shoal: cold sequential", "cold"),
             row("shoal: warm sequential", "warm"),
             row("… share of the dataset's blocks cached by the cold read", "cold.blocksCached", lambda x: f"{x:.2f}"),
             row(f"shoal: warm random 4 MiB reads, {c} clients", "random.4194304.bytesPerSecond"),
             row(f"peer: nginx directio, random 4 MiB files, {c} connections (wrk)", "nginx_direct.bytesPerSecond"),
             row(f"peer: nginx page cache, random 4 MiB files, {c} connections (wrk)", "nginx_cache.bytesPerSecond"),
             row("shoal: warm sequential from the DRAM tier", "tier.warm"),
             row("… share of the dataset's blocks in the DRAM tier", "tier.resident", lambda x: f"{x:.2f}"),
             row("… the same, replies sent by SENDMSG_ZC (sendZeroCopy)", "tier.warmZeroCopy"),
             row("split: shoal warm sequential, serve from memory (no disk)", "memory.warm"),
             row("split: shoal warm sequential, answer without data (no transfer)", "nodata.warm")]
    if engine:
        lines += [row(f"limit: fio seq read (4 MiB, {c} jobs × QD1)", "fio_jobs"), row(f"engine alone: hit reads (4 MiB, {c} readers)", "engine_hit")]
    lines += ["", "## Small random reads (warm)", "",
              "| reads | clients | shoal ops/s | p50 µs | p99 µs | redis GET ops/s | p50 µs | p99 µs | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for size in [4096, 65536]:
        for cc in args.concurrency:
            sk, rk = f"random.{size}.{cc}", f"redis.{size}.{cc}"
            lines.append(f"| {size // 1024} KiB | {cc} | {med[sk + '.opsPerSecond']:,.0f} ({f[sk + '.opsPerSecond']['min']:,.0f}–{f[sk + '.opsPerSecond']['max']:,.0f}) "
                         f"| {med[sk + '.p50Micros']:.0f} | {med[sk + '.p99Micros']:.0f} | {med[rk + '.opsPerSecond']:,.0f} | {med[rk + '.p50Micros']:.0f} "
                         f"| {med[rk + '.p99Micros']:.0f} | {med[sk + '.opsPerSecond'] / med[rk + '.opsPerSecond']:.2f} |")
    for cc in args.concurrency:
        key = f"tier.random.4096.{cc}"
        lines.append(f"| 4 KiB, DRAM tier | {cc} | {med[key + '.opsPerSecond']:,.0f} | {med[key + '.p50Micros']:.0f} | {med[key + '.p99Micros']:.0f} "
                     f"| {med[f'redis.4096.{cc}.opsPerSecond']:,.0f} | | | {med[key + '.opsPerSecond'] / med[f'redis.4096.{cc}.opsPerSecond']:.2f} |")
    for name, key in [("serve from memory", "memory.random.4096"), ("answer without data", "nodata.random.4096")]:
        lines.append(f"| 4 KiB, {name} | {c} | {med[key + '.opsPerSecond']:,.0f} | {med[key + '.p50Micros']:.0f} | {med[key + '.p99Micros']:.0f} | | | | "
                     f"{med[key + '.opsPerSecond'] / med[f'redis.4096.{c}.opsPerSecond']:.2f} |")
    lines += ["", f"## Per 4 KiB read, {c} clients (perf stat: syscalls and context switches, all threads)", "",
              "| | server syscalls | server switches | client syscalls | client switches |", "|---|---|---|---|---|"]
    for name, key in [("shoal (worker from disk, `shoal bench random`)", "costs.shoal"), ("redis-server, redis-benchmark", "costs.redis")]:
        lines.append(f"| {name} | {med[key + '.workerSyscalls']:.2f} | {med[key + '.workerSwitches']:.2f} | "
                     f"{med[key + '.clientSyscalls']:.2f} | {med[key + '.clientSwitches']:.2f} |")
    lines += ["", f"Worker with 1000 connections open, 100 of them reading: resident memory {med['hold.rssMiB']:.0f} MiB "
              f"(before: {med['hold.rssBeforeMiB']:.0f} MiB), threads {med['hold.threads']:.0f} (before: {med['hold.threadsBefore']:.0f}).", ""]
    lines += ["", "## CPU seconds per GB", "", "| process | median | min–max |", "|---|---|---|",
              row(f"iperf3 sender + receiver, {c} streams", "iperf3.cpuPerGB", lambda x: f"{x:.2f}"),
              row("shoal worker + client, warm", "warm.cpuPerGB", lambda x: f"{x:.2f}"),
              row("shoal worker, warm", "warm.workerCpuPerGB", lambda x: f"{x:.2f}"),
              row("shoal client, warm", "warm.clientCpuPerGB", lambda x: f"{x:.2f}"),
              row("shoal worker, cold (its store fetches included)", "cold.workerCpuPerGB", lambda x: f"{x:.2f}"),
              row("shoal client, cold", "cold.clientCpuPerGB", lambda x: f"{x:.2f}"),
              "", "## The channel: what authenticating it costs (warm sequential)", "",
              "| channel | GB/s | min–max | / untagged | worker CPU s/GB | client CPU s/GB |", "|---|---|---|---|---|---|"]
    for name, key in [("plain TCP, frames untagged (benchmark switch)", "plain"), ("plain TCP, frames tagged (default)", "tagged"),
                      ("TLS 1.3, " + ("kernel TLS module loaded" if os.path.exists("/sys/module/tls") else "in user space (no kernel TLS module)"), "tls")]:
        k = f"channel.{key}"
        lines.append(f"| {name} | {gb(med[k + '.warm'])} | {gb(f[k + '.warm']['min'])}–{gb(f[k + '.warm']['max'])} "
                     f"| {med[k + '.warm'] / med['channel.plain.warm']:.2f} | {med[k + '.workerCpuPerGB']:.2f} | {med[k + '.clientCpuPerGB']:.2f} |")
    lines += ["", "## Restart", "", "| figure | median | min–max |", "|---|---|---|",
              row("worker start to ready after a clean stop (s)", "restart.clean", lambda x: f"{x:.2f}"),
              row("… blocks kept", "restart.blocksKept", lambda x: f"{x:.2f}"),
              row("worker start to ready after kill -9 (s)", "restart.unclean", lambda x: f"{x:.2f}"),
              row("… blocks kept", "restart.blocksKeptUnclean", lambda x: f"{x:.2f}")]
    if engine:
        lines += ["", f"Engine: {engine['blocks']:,} blocks cached: index DRAM {engine['indexBytesPerBlock']:.2f} bytes/block "
                  f"(goal ≤ 16); recovery {engine['recoverCleanSeconds']:.2f} s after a clean stop (snapshot), "
                  f"{engine['recoverUncleanSeconds']:.2f} s after an unclean one (footers, as after kill -9).", "",
                  "| trace | engine miss | + thrash guard | LRU miss | engine writes | + guard | LRU writes |", "|---|---|---|---|---|---|---|"]
        for r in replay:
            lines.append(f"| {r['trace']} | {r['engineMissRatio']:.3f} | {r['guardedMissRatio']:.3f} | {r['lruMissRatio']:.3f} | "
                         f"{r['engineBlocksWritten']} | {r['guardedBlocksWritten']} | {r['lruBlocksWritten']} |")
        lines += ["", "## Placement (2^20 slots, weighted rendezvous; `shoal bench placement`)", "",
                  "Balance: the most slots any member owns against its weight's share. Moved: the share of slots whose owner "
                  "changes when one member joins (or leaves), against that member's weight share (the least that must move).", "",
                  "| members | weights | max/mean | moved on join / ideal | moved on leave / ideal | table build (s) | lookup (ns) |",
                  "|---|---|---|---|---|---|---|"]
        for pc in engine["placement"]:
            lines.append(f"| {pc['members']} | {pc['weights']} | {pc['balanceMaxOverMean']:.3f} | "
                         f"{pc['movedOnJoin']:.5f} / {pc['idealJoin']:.5f} | {pc['movedOnLeave']:.5f} / {pc['idealLeave']:.5f} | "
                         f"{pc['buildSeconds']:.2f} | {pc['lookupNanos']:.1f} |")
    lines += ["", "## Ratios against the goals", "", "| ratio | value | goal | |", "|---|---|---|---|"]
    for name, v, g, kind in ratios:
        met = v >= g if kind == "min" else v <= g
        lines.append(f"| {name} | {v:.2f} | {'≥' if kind == 'min' else '≤'} {g} | {'met' if met else 'not met'} |")
    lines += ["", "## How the limits and peers were run", ""] + [f"- {k}: {v}" for k, v in sorted(limits.items())]
    lines += [f"- machine: {machine()}"]
    return "\n".join(lines) + "\n", [{"name": n, "value": v, "goal": g, "kind": k} for n, v, g, k in ratios]


def chart(path, args, f, ratios):
    """Throughput bars, small-read ops/s and p99 by clients, and the ratios against their goals."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("perf: matplotlib missing (Tools/install-deps.sh --perf installs it); no chart", file=sys.stderr)
        return
    med = {k: v["median"] for k, v in f.items()}
    fig, ((a, r), (b, c)) = plt.subplots(2, 2, figsize=(17, 11))
    bars = [("fio", "fio"), ("iperf3", "iperf3"), ("direct GET", "direct_get"), ("shoal cold", "cold"), ("shoal warm", "warm"),
            ("shoal 4M rand", "random.4194304.bytesPerSecond"), ("nginx directio", "nginx_direct.bytesPerSecond"),
            ("nginx page cache", "nginx_cache.bytesPerSecond"), ("shoal, memory", "memory.warm"), ("shoal, no data", "nodata.warm")]
    colors = ["#888"] * 3 + ["#1f77b4"] * 3 + ["#d62728"] * 2 + ["#9ecae1"] * 2
    vals = [med[k] / 1e9 for _, k in bars]
    errs = [[(med[k] - f[k]["min"]) / 1e9 for _, k in bars], [(f[k]["max"] - med[k]) / 1e9 for _, k in bars]]
    a.bar([n for n, _ in bars], vals, color=colors, yerr=errs, capsize=3)
    a.set_ylim(bottom=0)
    a.set_ylabel("GB/s")
    a.set_title(f"Throughput: bars are the median of {args.runs} run(s), whiskers min–max\n"
                "grey: limits, blue: shoal, red: peers, light blue: shoal with an isolating switch")
    a.tick_params(axis="x", rotation=60)
    for size, style in [(4096, "-"), (65536, "--")]:
        b.plot(args.concurrency, [med[f"random.{size}.{cc}.opsPerSecond"] for cc in args.concurrency], "o" + style, color="#1f77b4", label=f"shoal {size // 1024} KiB")
        b.plot(args.concurrency, [med[f"redis.{size}.{cc}.opsPerSecond"] for cc in args.concurrency], "s" + style, color="#d62728", label=f"redis GET {size // 1024} KiB")
        c.plot(args.concurrency, [med[f"random.{size}.{cc}.p99Micros"] for cc in args.concurrency], "o" + style, color="#1f77b4", label=f"shoal {size // 1024} KiB")
        c.plot(args.concurrency, [med[f"redis.{size}.{cc}.p99Micros"] for cc in args.concurrency], "s" + style, color="#d62728", label=f"redis GET {size // 1024} KiB")
    for ax, title, unit in [(b, "Warm random reads (median)", "ops/s"), (c, "p99 latency (median of runs, log scale)", "µs")]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.concurrency)
        ax.set_xticklabels([str(cc) for cc in args.concurrency])
        ax.set_xlabel("clients (one read in flight each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend()
    b.set_ylim(bottom=0)
    c.set_yscale("log")
    names = [x["name"] for x in ratios]
    values = [x["value"] for x in ratios]
    met = [(x["value"] >= x["goal"]) if x["kind"] == "min" else (x["value"] <= x["goal"]) for x in ratios]
    r.barh(range(len(ratios)), values, color=["#2ca02c" if m else "#d62728" for m in met])
    for i, x in enumerate(ratios):
        r.plot([x["goal"], x["goal"]], [i - 0.4, i + 0.4], color="black")
        r.text(x["value"], i, f" {x['value']:.2f} ({'≥' if x['kind'] == 'min' else '≤'} {x['goal']})", va="center")
    r.set_yticks(range(len(ratios)))
    r.set_yticklabels(names, fontsize=8)
    r.invert_yaxis()
    r.set_xlim(left=0)
    r.set_title("Ratios against their goals (black line: goal; green: met, red: not met)")
    fig.suptitle(f"Shoal perf, {args.size} dataset, {args.connections} connections — {machine()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    # The peers, and matplotlib in the project's venv; then go on under that venv's Python.
    venv_python = os.path.join(ROOT, ".tools/venv/bin/python")
    if os.environ.get("SHOAL_PERF_IN_VENV") != "1":
        subprocess.run([os.path.join(ROOT, "Tools/install-deps.sh"), "--perf"], check=True, stdout=subprocess.DEVNULL)
        os.environ["SHOAL_PERF_IN_VENV"] = "1"
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one smaller run, engine figures at 100k blocks (under 2 minutes after the build)")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--size", default=None, help="dataset size (default 1GiB, 256MiB with --quick)")
    p.add_argument("--connections", type=int, default=8, help="client connections = sequential read concurrency; also the clients of the ratios")
    p.add_argument("--out", default=os.path.join(ROOT, ".shoal/perf"))
    p.add_argument("--skip-engine", action="store_true", help="only the end-to-end figures")
    args = p.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.size = args.size or ("256MiB" if args.quick else "1GiB")
    args.concurrency = sorted({1, args.connections} | (set() if args.quick else {32}))

    started = time.monotonic()
    run = Run(args)
    engine = replay = None
    try:
        run.setup()
        print("perf: peers (redis-server, nginx)...", flush=True)
        run.start_redis()
        run.start_nginx()
        figures = measure(run, args)
        if not args.skip_engine:
            extra, engine, replay = measure_engine(run, args)
            figures.update(extra)
    finally:
        run.teardown()

    text, ratios = report(args, figures, engine, replay, run.limits)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"dataset": args.size, "blockSize": BLOCK, "connections": args.connections, "runs": args.runs,
                   "limits": run.limits, "machine": machine(),
                   "figures": figures, "ratios": ratios, "engine": engine, "replay": replay}, f, indent=2)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    chart(os.path.join(args.out, "report.png"), args, figures, ratios)
    print(text)
    print(f"perf: {time.monotonic() - started:.0f} s; report.md, report.json and report.png in {args.out}")
    # The work folder holds the store's data and a preallocated cache: gigabytes, of no use now.
    shutil.rmtree(run.work, ignore_errors=True)


if __name__ == "__main__":
    main()
