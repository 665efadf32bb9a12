"""`shoal warm` as a data engineer runs it, against the test cluster (three workers, SeaweedFS):
JSON progress, --check, re-runs, two warms at once, interruptions, denied and vanished
objects, pins, manifests, and a worker killed mid-warm. Store GETs are counted by SeaweedFS
itself (its Prometheus metrics)."""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from conftest import Cluster


def env_of(cluster):
    return dict(os.environ, **cluster.env)


def shoal(cluster, *args, timeout=120):
    return subprocess.run([cluster.bin, *args], env=env_of(cluster), capture_output=True, text=True, timeout=timeout)


def populate(cluster, url, size, object_size):
    r = shoal(cluster, "bench", "populate", url, "--size", size, "--object-size", object_size)
    assert r.returncode == 0, r.stderr


def documents(text):
    """Every line of a warm's output parses as one JSON document."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def warm(cluster, *args):
    r = shoal(cluster, "warm", *args, "--json")
    docs = documents(r.stdout)
    assert docs and docs[-1]["type"] in ("summary",), r.stdout + r.stderr
    return r.returncode, docs


def store_gets(cluster, bucket):
    """GETs SeaweedFS answered with data (200 or 206) for `bucket`, from its own metrics."""
    with urllib.request.urlopen(cluster.env["SHOAL_S3_METRICS"], timeout=10) as f:
        text = f.read().decode()
    total = 0
    for m in re.finditer(r'^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("bucket") == bucket and labels.get("type") == "GET" and labels.get("code") in ("200", "206"):
            total += int(float(m.group(2)))
    return total


def blocks_of(sizes, block=4 << 20):
    return sum(max(0, (s + block - 1) // block) for s in sizes)


def test_warm_small_and_large_objects_check_and_rerun(cluster, bucket):
    populate(cluster, f"s3://{bucket}/small", "6000KiB", "4KiB")  # 1500 objects
    populate(cluster, f"s3://{bucket}/large", "72MiB", "24MiB")  # 3 objects of 6 blocks
    blocks = 1500 + 3 * 6
    rc, docs = warm(cluster, f"s3://{bucket}/", "--check")
    assert rc == 0 and docs[-1]["check"] and docs[-1]["objects"] == 1503 and docs[-1]["cachedPercent"] == 0

    before = store_gets(cluster, bucket)
    rc, docs = warm(cluster, f"s3://{bucket}/", "--interval", "0.05")
    summary = docs[-1]
    assert rc == 0, summary
    assert summary["newlyCached"] == {"objects": 1503, "bytes": 1500 * 4096 + 3 * (24 << 20)}
    assert summary["alreadyCached"]["objects"] == 0 and summary["failed"] == []
    assert summary["blocksFromStore"] == blocks
    assert store_gets(cluster, bucket) - before == blocks, "each block fetched from the store exactly once"
    progress = [d for d in docs if d["type"] == "progress"]
    assert progress, "no progress documents"
    for d in progress:
        assert {"objects", "objectsTotal", "bytes", "bytesTotal", "bytesPerSecond", "failed", "seconds"} <= d.keys()
        assert d["bytes"] <= d["bytesTotal"] or d["listing"]
    # The data stayed on the workers: this process received far less than it warmed.
    assert summary["bytesReceivedHere"] < summary["bytes"] / 20, summary["bytesReceivedHere"]
    # The listing's time is part of the whole, and is not all of it.
    listed_by = [d["seconds"] for d in progress if not d["listing"]]
    assert 0 < summary["listingSeconds"] < summary["seconds"], summary
    assert not listed_by or summary["listingSeconds"] <= min(listed_by), (summary, listed_by)

    rc, docs = warm(cluster, f"s3://{bucket}/", "--check")
    assert rc == 0 and docs[-1]["cachedPercent"] == 100 and docs[-1]["cached"]["objects"] == 1503

    before = store_gets(cluster, bucket)
    rc, docs = warm(cluster, f"s3://{bucket}/")
    assert rc == 0 and docs[-1]["alreadyCached"]["objects"] == 1503 and docs[-1]["newlyCached"]["objects"] == 0
    assert store_gets(cluster, bucket) == before, "a re-run fetched what was cached"


def test_two_warms_of_the_same_prefix_fetch_each_block_once(cluster, bucket):
    populate(cluster, f"s3://{bucket}/d", "96MiB", "8MiB")  # 12 objects, 24 blocks
    before = store_gets(cluster, bucket)
    cmd = [cluster.bin, "warm", f"s3://{bucket}/d", "--json", "--concurrency", "8"]
    runs = [subprocess.Popen(cmd, env=env_of(cluster), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=120)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0]
    summaries = [documents(o)[-1] for o in outs]
    assert sum(s["blocksFromStore"] for s in summaries) == 24
    assert store_gets(cluster, bucket) - before == 24, "two warms at once fetched a block twice"


def test_an_interrupted_warm_reruns_and_skips_what_is_cached(cluster, bucket):
    populate(cluster, f"s3://{bucket}/d", "40MiB", "1MiB")
    before = store_gets(cluster, bucket)
    p = subprocess.Popen([cluster.bin, "warm", f"s3://{bucket}/d", "--json", "--interval", "0.1", "--bandwidth", "8MiB",
                          "--concurrency", "4"], env=env_of(cluster), stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        d = json.loads(line)
        if d["type"] == "progress" and d["objects"] >= 8:
            break
    p.send_signal(signal.SIGINT)
    p.wait(30)
    assert p.returncode != 0
    rc, docs = warm(cluster, f"s3://{bucket}/d")
    s = docs[-1]
    assert rc == 0 and s["alreadyCached"]["objects"] >= 8
    assert s["alreadyCached"]["objects"] + s["newlyCached"]["objects"] == 40
    assert store_gets(cluster, bucket) - before == 40, "a block was fetched twice across the interruption"


def test_a_bandwidth_cap_paces_the_store(cluster, bucket):
    populate(cluster, f"s3://{bucket}/d", "12MiB", "1MiB")
    start = time.monotonic()
    rc, docs = warm(cluster, f"s3://{bucket}/d", "--bandwidth", "4MiB")
    # A second's worth goes at once, then 4 MiB/s: at least 2 s for 12 MiB.
    assert rc == 0 and time.monotonic() - start >= 1.8


def test_denied_missing_and_malformed_are_reported_by_name(cluster, bucket):
    populate(cluster, f"s3://{bucket}/d", "3MiB", "1MiB")
    # Credentials that may list the bucket but not read it.
    rc, docs = warm(cluster, f"s3://listonly@{bucket}/d")
    failed = docs[-1]["failed"]
    assert rc == 1 and len(failed) == 3
    assert all(f["code"] == "access_denied" and f["url"].startswith(f"s3://listonly@{bucket}/d/") for f in failed)

    rc, docs = warm(cluster, f"s3://{bucket}/nothing-here/")
    assert rc == 1 and docs[-1]["emptyPrefixes"] == [f"s3://{bucket}/nothing-here/"]
    r = shoal(cluster, "warm", f"s3://{bucket}/nothing-here/")
    assert r.returncode == 1 and f"nothing under s3://{bucket}/nothing-here/" in r.stderr

    # A listing that fails says which prefix, and why, once: from a worker (a store it does not
    # know) and from the client (no worker to ask).
    rc, docs = warm(cluster, f"s3://nostore@{bucket}/d")
    failed = docs[-1]["failed"]
    assert rc == 1 and [f["code"] for f in failed] == ["unknown_store"], failed
    assert failed[0]["url"] == f"s3://nostore@{bucket}/d" and failed[0]["error"].count("cannot list") == 1, failed
    alone = dict(env_of(cluster), SHOAL_ETCD="", SHOAL_MEMBERS_FILE="", SHOAL_WORKERS="127.0.0.1:1")
    r = subprocess.run([cluster.bin, "warm", f"s3://{bucket}/d"], env=alone, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"cannot list s3://{bucket}/d: no worker can be reached" in r.stderr, r.stderr
    assert r.stderr.count("cannot list") == 1, r.stderr

    r = shoal(cluster, "warm", "gs://elsewhere/x")
    assert r.returncode == 2 and "s3://" in r.stderr
    r = shoal(cluster, "warm", f"s3://{bucket}/d", "--check", "--pin")
    assert r.returncode != 0 and "--pin" in r.stderr


def test_pin_and_manifest(cluster, client, bucket):
    populate(cluster, f"s3://{bucket}/d", "2MiB", "1MiB")
    manifest = os.path.join(cluster.dir, f"{bucket}.manifest")
    rc, docs = warm(cluster, f"s3://{bucket}/d", "--pin", "--ttl", "1h", "--manifest", manifest)
    assert rc == 0
    for admin in cluster.env["SHOAL_ADMINS"].split(","):
        with urllib.request.urlopen(f"http://{admin}/pins", timeout=10) as f:
            pins = json.loads(f.read())
        assert any(p["prefix"] == f"s3://{bucket}/d" and 0 < p["secondsLeft"] <= 3600 for p in pins["pins"]), pins
    with open(manifest) as f:
        lines = [json.loads(line) for line in f]
    assert lines[0]["shoalManifest"] == 1 and lines[0]["objects"] == 2
    assert sorted(o["url"] for o in lines[1:]) == [f"s3://{bucket}/d/part-00000.bin", f"s3://{bucket}/d/part-00001.bin"]

    r = shoal(cluster, "warm", "--manifest", manifest, "--diff", "--json")
    assert r.returncode == 0 and documents(r.stdout)[-1] == {"type": "summary", "objects": 2, "added": 0, "removed": 0, "changed": 0}
    # A job reads the dataset by the manifest: those versions, no STAT per object.
    import shoal as shoal_package

    objects = shoal_package.read_manifest(manifest)
    assert [o.url for o in objects] == [f"s3://{bucket}/d/part-00000.bin", f"s3://{bucket}/d/part-00001.bin"]
    first = client.read(objects[0].url, version=objects[0])
    assert len(first) == 1 << 20
    cluster.store.put(bucket, "d/part-00000.bin", b"changed")
    cluster.store.put(bucket, "d/new", b"new")
    cluster.store.delete(bucket, "d/part-00001.bin")
    r = shoal(cluster, "warm", "--manifest", manifest, "--diff", "--json")
    docs = documents(r.stdout)
    # The store moved on, the manifest did not: its version, warmed, is what a read by it gets
    # (the epoch stays consistent); read by its name alone, the object is the new one.
    assert client.read(objects[0].url, version=objects[0]) == first
    assert client.read(objects[0].url) == b"changed"
    bad = os.path.join(cluster.dir, f"{bucket}.not-a-manifest")
    with open(bad, "w") as f:
        f.write("hello\n")
    try:
        shoal_package.read_manifest(bad)
        raise AssertionError("a file that is not a manifest was read")
    except shoal_package.InvalidRequest as e:
        assert "not a Shoal manifest" in str(e)
    assert r.returncode == 1
    assert sorted((d["change"], d["url"]) for d in docs if d["type"] == "change") == [
        ("added", f"s3://{bucket}/d/new"), ("changed", f"s3://{bucket}/d/part-00000.bin"), ("removed", f"s3://{bucket}/d/part-00001.bin")]


def test_a_worker_killed_mid_warm_leaves_its_blocks_to_the_fallbacks():
    c = Cluster("warmkill", 21670, workers=3)
    try:
        c.store.create_bucket("pywarmkill")
        populate(c, "s3://pywarmkill/d", "60MiB", "1MiB")
        p = subprocess.Popen([c.bin, "warm", "s3://pywarmkill/d", "--json", "--interval", "0.1", "--bandwidth", "12MiB",
                              "--concurrency", "4"], env=env_of(c), stdout=subprocess.PIPE, text=True)
        lines = []
        for line in p.stdout:
            lines.append(line)
            d = json.loads(line)
            if d["type"] == "progress" and d["objects"] >= 10:
                os.kill(c.worker_pid(1), signal.SIGKILL)
                break
        out = "".join(lines) + p.stdout.read()
        p.wait(60)
        s = documents(out)[-1]
        assert p.returncode == 0, s
        assert s["failed"] == [] and s["newlyCached"]["objects"] + s["alreadyCached"]["objects"] == 60
        # What the dead worker held is gone with it: a re-run fills it on the fallbacks.
        rc, docs = warm(c, "s3://pywarmkill/d")
        assert rc == 0 and docs[-1]["failed"] == []
        rc, docs = warm(c, "s3://pywarmkill/d", "--check")
        assert rc == 0 and docs[-1]["cachedPercent"] == 100, docs[-1]
    finally:
        c.stop()


def metrics_of(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as f:
        text = f.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0]] = out.get(name.split("{")[0], 0) + float(value)
    return out


def test_ls_cached_and_stats_json_agree_with_the_workers(cluster, bucket):
    populate(cluster, f"s3://{bucket}/d", "8MiB", "2MiB")
    r = shoal(cluster, "ls", "--cached", "--json", f"s3://{bucket}/d")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(rows) == 4 and all(row["cachedPercent"] == 0 for row in rows)
    rc, _ = warm(cluster, f"s3://{bucket}/d/part-00001.bin")
    assert rc == 0
    r = shoal(cluster, "ls", "--cached", f"s3://{bucket}/d")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and "100%" in lines[1] and "d/part-00001.bin" in lines[1] and " 0%" in lines[0]
    assert lines[-1].endswith("cached: 2 MiB (25.0%)")

    r = shoal(cluster, "stats", "--json", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    admins = cluster.env["SHOAL_ADMINS"].split(",")
    assert sorted(w["address"] for w in snap["workers"]) == sorted(admins) and all(w["up"] for w in snap["workers"]), [(w["address"], w.get("error")) for w in snap["workers"]]
    for w in snap["workers"]:
        m = metrics_of(w["address"])  # the cluster is idle: the counters have not moved
        assert w["hitsTotal"] == m["shoal_hits_total"] and w["missesTotal"] == m["shoal_misses_total"]
        assert w["fillsTotal"] == m["shoal_fills_total"] and w["bytesFilledTotal"] == m["shoal_bytes_filled_total"]
        assert w["bytesServedTotal"] == m["shoal_bytes_served_total"]
        assert w["rdmaWritesTotal"] == m.get("shoal_rdma_writes_total", 0) and w["rdmaFallbacksTotal"] == m.get("shoal_rdma_fallbacks_total", 0)
    ds = [d for d in snap["datasets"] if d["dataset"] == f"s3://{bucket}/d/"]
    assert ds and ds[0]["bytesCached"] == 2 << 20 and ds[0]["size"] == 8 << 20 and ds[0]["cachedPercent"] == 25


def test_hot_ranks_the_prefix_read_more_and_warm_hot_takes_it(cluster, client, bucket):
    populate(cluster, f"s3://{bucket}/often", "1MiB", "256KiB")
    populate(cluster, f"s3://{bucket}/seldom", "1MiB", "256KiB")
    often = client.list(f"s3://{bucket}/often/")
    seldom = client.list(f"s3://{bucket}/seldom/")
    for _ in range(3):
        for o in often:
            client.read(o.url, version=o)
    for o in seldom:
        client.read(o.url, version=o)
    r = shoal(cluster, "hot", "--since", "1h", "--limit", "1000", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    names = [row["prefix"] for row in rows]
    a, b = names.index(f"s3://{bucket}/often/"), names.index(f"s3://{bucket}/seldom/")
    assert a < b and rows[a]["reads"] == 12 and rows[b]["reads"] == 4
    assert rows[a]["size"] == 1 << 20 and rows[a]["bytesRead"] == 12 * 256 * 1024

    # Every prefix read in the last hour (other tests' too, some of which emptied theirs).
    r = shoal(cluster, "warm", "--hot", "1000", "--since", "1h", "--check", "--json")
    assert r.returncode in (0, 1), r.stderr
    assert f"shoal: hot: s3://{bucket}/often/ (12 reads" in r.stderr and f"shoal: hot: s3://{bucket}/seldom/ (4 reads" in r.stderr
    assert documents(r.stdout)[-1]["objects"] >= 8


def test_evict_drops_a_prefix_on_every_worker(cluster, bucket):
    populate(cluster, f"s3://{bucket}/d", "12MiB", "4MiB")
    rc, docs = warm(cluster, f"s3://{bucket}/d")
    assert rc == 0 and docs[-1]["newlyCached"]["objects"] == 3
    r = shoal(cluster, "evict", f"s3://{bucket}/d")
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line.split(": ", 1)[1]) for line in r.stdout.splitlines()]
    assert len(answers) == 3 and sum(a["blocks"] for a in answers) == 3
    rc, docs = warm(cluster, f"s3://{bucket}/d", "--check")
    assert rc == 0 and docs[-1]["cachedPercent"] == 0
    r = shoal(cluster, "evict", f"s3://{bucket}/nothing-here/")
    assert r.returncode == 1 and "nothing under" in r.stderr
