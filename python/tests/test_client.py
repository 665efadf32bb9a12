import ctypes
import hashlib
import multiprocessing
import os
import random
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest

import shoal
from shoal import _native

from conftest import Cluster


def put_random(cluster, bucket, key, size, seed):
    data = random.Random(seed).randbytes(size)
    cluster.store.put(bucket, key, data)
    return data


def test_random_ranges_are_byte_exact(cluster, client, bucket):
    sizes = {"one": 1, "small": 100 << 10, "odd": (9 << 20) + 12345}
    datas = {k: put_random(cluster, bucket, k, n, i) for i, (k, n) in enumerate(sizes.items())}
    rng = random.Random(7)
    for key, data in datas.items():
        with client.open(f"s3://{bucket}/{key}") as f:
            assert f.size == len(data)
            for _ in range(25):
                start = rng.randrange(0, len(data))
                length = rng.randrange(0, len(data) - start + 10)
                buf = bytearray(length)
                n = f.pread_into(buf, start)
                assert bytes(buf[:n]) == data[start:start + length]
            assert f.read() == data
            assert f.read(10) == b""  # at the end
            f.seek(-1, os.SEEK_END)
            assert f.tell() == len(data) - 1
            assert f.read() == data[-1:]
    assert client.read(f"s3://{bucket}/odd", offset=5 << 20, length=100) == datas["odd"][5 << 20:(5 << 20) + 100]


def test_readinto_fills_bytearray_memoryview_and_numpy_in_place(cluster, client, bucket):
    data = put_random(cluster, bucket, "k", 6 << 20, 3)
    with client.open(f"s3://{bucket}/k") as f:
        ba = bytearray(1 << 20)
        assert f.readinto(ba) == len(ba) and ba == data[:1 << 20]
        big = bytearray(3 << 20)
        mv = memoryview(big)[1000:(2 << 20) + 1000]
        assert f.readinto(mv) == len(mv) and bytes(mv) == data[1 << 20:(3 << 20)]
        arr = np.zeros(1 << 18, dtype=np.float32)  # 1 MiB, not bytes: filled as its raw bytes
        assert f.readinto(arr) == arr.nbytes
        assert arr.tobytes() == data[3 << 20:4 << 20]
        with pytest.raises(TypeError):
            f.readinto(b"read-only")
        huge = shoal.alloc_buffer(2 << 20)  # huge-page memory for large reads
        assert f.pread_into(huge, 4 << 20) == 2 << 20 and huge[:] == data[4 << 20:6 << 20]


def test_small_sequential_reads_use_read_ahead(cluster, client, bucket):
    data = put_random(cluster, bucket, "seq", (10 << 20) + 7, 4)
    with client.open(f"s3://{bucket}/seq") as f:
        out = bytearray()
        while True:
            chunk = f.read(64 << 10)
            if not chunk:
                break
            out += chunk
        assert f._ra is not None  # sequential small reads took a read-ahead window
    assert bytes(out) == data
    assert shoal.client.read_ahead_budget.used == 0  # closed: the window went back


def reads_by_name(cluster):
    total = 0
    for admin in cluster.env["SHOAL_ADMINS"].split(","):
        for line in urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode().splitlines():
            if line.startswith("shoal_reads_by_name_total "):
                total += int(float(line.split()[1]))
    return total


def test_an_object_read_by_its_url_alone_costs_one_request(cluster, client, bucket):
    datas = {"empty": b"", "one": b"x", "small": put_random(cluster, bucket, "small", 100 << 10, 21),
             "block": put_random(cluster, bucket, "block", 4 << 20, 22), "big": put_random(cluster, bucket, "big", (9 << 20) + 5, 23)}
    cluster.store.put(bucket, "empty", b"")
    cluster.store.put(bucket, "one", b"x")
    for key, data in datas.items():
        before = reads_by_name(cluster)
        assert client.read(f"s3://{bucket}/{key}") == data
        if len(data) >= 2:
            assert reads_by_name(cluster) == before + 1  # the version came with the bytes: no STAT
    assert client.read(f"s3://{bucket}/big", length=100) == datas["big"][:100]
    with pytest.raises(shoal.NotFound):
        client.read(f"s3://{bucket}/nothing")
    # A changed object is read at its new version (the worker resolves it; its metadata cache
    # is revalidated through STAT with revalidate, as before).
    cluster.store.put(bucket, "small", b"new contents")
    got = client.read(f"s3://{bucket}/small")
    assert got in (b"new contents", datas["small"])  # within the workers' metadata TTL either is the truth they know


def test_listing_gives_versions_that_open_with_no_round_trip(cluster, client, bucket):
    for i in range(5):
        cluster.store.put(bucket, f"p/{i}", bytes([i]) * (i + 1))
    cluster.store.put(bucket, "q/other", b"x")
    listed = client.list(f"s3://{bucket}/p/")
    assert [o.key for o in listed] == [f"p/{i}" for i in range(5)]
    for o in listed:
        assert client.stat(o.url) == o  # the listing's etag is the one a HEAD gives
        with client.open(o.url, version=o) as f:
            assert f.read() == bytes([int(o.key[-1])]) * o.size
    assert client.list(f"s3://{bucket}/nothing-here/") == []


def test_a_read_at_a_known_version_is_one_call_with_every_range(cluster, client, bucket):
    data = put_random(cluster, bucket, "known", 300_000, seed=5)
    o = client.stat(f"s3://{bucket}/known")
    for version in (o, (o.size, o.etag)):
        assert client.read(o.url, version=version) == data
        assert client.read(o.url, offset=1000, length=5000, version=version) == data[1000:6000]
        assert client.read(o.url, offset=17, length=1, version=version) == data[17:18]
        assert client.read(o.url, offset=299_990, length=100, version=version) == data[299_990:]  # short at the end
        assert client.read(o.url, offset=300_000, version=version) == b""
        assert client.read(o.url, offset=5, length=0, version=version) == b""
    with pytest.raises(shoal.InvalidRequest):
        client.read(o.url, offset=-1, version=o)
    for bad in ("an-etag", (1, 2, 3), 42):
        with pytest.raises(shoal.InvalidRequest, match="a version is an ObjectInfo"):
            client.read(o.url, version=bad)
    with pytest.raises(shoal.InvalidRequest):
        client.read("s3://b/with\0nul", length=0, version=o)  # checked even when nothing is read
    # A version the store has moved on from, never read before (a cached block of a version
    # stays readable at that version).
    cluster.store.put(bucket, "known2", b"first")
    first = client.stat(f"s3://{bucket}/known2")
    cluster.store.put(bucket, "known2", b"second")
    with pytest.raises(shoal.VersionChanged):
        client.read(first.url, version=first)


def test_a_changed_object_is_an_error_never_a_mix(cluster, client, bucket):
    cluster.store.put(bucket, "v", b"a" * 1000)
    old = client.stat(f"s3://{bucket}/v")
    cluster.store.put(bucket, "v", b"b" * 1000)
    with client.open(f"s3://{bucket}/v", version=old) as f:
        with pytest.raises(shoal.VersionChanged):
            f.read()


def test_errors_are_exceptions_of_clear_types(cluster, client, bucket):
    with pytest.raises(shoal.NotFound) as e:
        client.open(f"s3://{bucket}/missing")
    assert "missing" in str(e.value) and isinstance(e.value, FileNotFoundError)
    with pytest.raises(shoal.InvalidRequest):
        client.open("http://not-s3/x")
    with pytest.raises(shoal.InvalidRequest) as e:
        shoal.Client(colour="red")
    assert "colour" in str(e.value)
    with pytest.raises(shoal.InvalidRequest) as e:
        shoal.Client(**cluster.settings(), connections="lots")
    assert "connections" in str(e.value)
    with pytest.raises(shoal.ClusterUnreachable):
        shoal.Client(workers="127.0.0.1:9", view_discovery=False, secret_file=cluster.env["SHOAL_SECRET_FILE"],
                     connect_timeout_ms=200).stat(f"s3://{bucket}/x")
    wrong = os.path.join(cluster.dir, "wrong-secret")
    with open(wrong, "w") as f:
        f.write("not-the-cluster-secret-at-all")
    os.chmod(wrong, 0o600)
    with pytest.raises(shoal.AccessDenied):
        shoal.Client(workers=cluster.env["SHOAL_WORKERS"].split(",")[0], view_discovery=False, secret_file=wrong).stat(f"s3://{bucket}/x")


def test_bad_arguments_never_crash_the_process(cluster, client, bucket):
    cluster.store.put(bucket, "k", b"0123456789")
    with pytest.raises(shoal.InvalidRequest):
        client.list("s3://" + "s" * 300 + f"@{bucket}/")  # a store name longer than the wire's field
    with pytest.raises(shoal.InvalidRequest):
        client.list(f"s3://{bucket}/" + "p" * 70000)
    with pytest.raises(shoal.InvalidRequest):
        client.read(f"s3://{bucket}/k", offset=-1)
    with client.open(f"s3://{bucket}/k") as f:
        with pytest.raises(shoal.InvalidRequest):
            f.pread_into(bytearray(4), -5)
        with pytest.raises(shoal.InvalidRequest):
            client.read_batch([(f, -1, 4)])
    assert [o.key for o in client.list(f"s3://{bucket}/", limit=1)] == ["k"]
    with pytest.raises(shoal.InvalidRequest):
        client.read(f"s3://{bucket}/k\x00anything")  # never read as s3://.../k
    with pytest.raises(shoal.InvalidRequest):
        client.open(12345)
    with pytest.raises(shoal.InvalidRequest):
        client.open(f"s3://{bucket}/k", version=(-1, '"e"'))


def test_closing_a_file_while_another_thread_reads_it(cluster, client, bucket):
    data = put_random(cluster, bucket, "race", 16 << 20, 12)
    for _ in range(5):
        f = client.open(f"s3://{bucket}/race")
        outcome = {}

        def read():
            try:
                outcome["n"] = f.pread_into(bytearray(16 << 20), 0)
            except ValueError as e:  # closed before it began
                outcome["closed"] = e

        t = threading.Thread(target=read)
        t.start()
        f.close()  # waits for a read in progress; later ones fail cleanly
        t.join()
        assert outcome.get("n") == len(data) or "closed" in outcome
        with pytest.raises(ValueError):
            f.pread_into(bytearray(4), 0)


def test_reads_release_the_gil():
    # ctypes.CDLL (not PyDLL) drops the GIL around every call into libshoal.
    assert isinstance(_native.lib, ctypes.CDLL) and not isinstance(_native.lib, ctypes.PyDLL)


def test_batched_reads_of_many_small_objects(cluster, client, bucket):
    datas = [put_random(cluster, bucket, f"s/{i:03}", 10_000 + i, 100 + i) for i in range(120)]
    listed = client.list(f"s3://{bucket}/s/")
    got = client.read_batch([(o, 0, o.size) for o in listed])
    assert got == datas
    # Ranges of several objects, one of them missing: that one fails, the others read.
    results = client.read_batch([(listed[0], 5, 10), (f"s3://{bucket}/s/001", 0, None)], return_exceptions=True)
    assert results == [datas[0][5:15], datas[1]]
    ghost = shoal.ObjectInfo(f"s3://{bucket}/s/ghost", "s/ghost", 10, '"0123"')
    results = client.read_batch([(listed[2], 0, 4), (ghost, 0, 10)], return_exceptions=True)
    assert results[0] == datas[2][:4] and isinstance(results[1], shoal.ShoalError)


def _child_read(args):
    url, offset, length = args
    c = CLIENT_IN_PARENT  # inherited through fork, used first in the parent
    return hashlib.sha256(c.read(url, offset=offset, length=length)).hexdigest()


CLIENT_IN_PARENT = None


def test_a_forked_pool_reads_through_the_parents_client(cluster, client, bucket):
    global CLIENT_IN_PARENT
    data = put_random(cluster, bucket, "fork", 12 << 20, 9)
    url = f"s3://{bucket}/fork"
    CLIENT_IN_PARENT = client
    assert client.read(url, 0, 100) == data[:100]  # the parent holds pooled connections now
    jobs = [(url, i << 20, 3 << 20) for i in range(8)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        got = pool.map(_child_read, jobs)
    assert got == [hashlib.sha256(data[o:o + n]).hexdigest() for _, o, n in jobs]
    assert client.read(url) == data  # and the parent's connections still work


def test_many_threads_read_at_once(cluster, client, bucket):
    data = put_random(cluster, bucket, "threads", 8 << 20, 11)
    url = f"s3://{bucket}/threads"
    errors = []

    def reader(i):
        try:
            for j in range(5):
                off = ((i * 5 + j) * 131072) % (len(data) - 65536)
                assert client.read(url, off, 65536) == data[off:off + 65536]
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_worker_killed_during_a_read_is_routed_around():
    c = Cluster("kill", 21470, workers=3)
    try:
        bucket = "pykill"
        c.store.create_bucket(bucket)
        data = random.Random(5).randbytes(48 << 20)
        c.store.put(bucket, "big", data)
        client = shoal.Client(**c.settings(), timeout_ms=3000)
        url = f"s3://{bucket}/big"
        assert client.read(url) == data  # warm on all three workers
        result = {}

        def read():
            try:
                result["data"] = client.read(url)
            except Exception as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.05)
        os.kill(c.worker_pid(1), signal.SIGKILL)
        t.join(60)
        assert "error" not in result, result.get("error")
        assert result["data"] == data
        assert client.read(url) == data  # and after it, from the fallbacks
        client.close()
    finally:
        c.stop()


def test_rdma_asked_on_a_host_without_a_device_reads_over_tcp(cluster, bucket):
    # libshoal loads libibverbs only when RDMA is asked for; with no device (this host has none)
    # the reads go over TCP, byte-exact, and nothing fails.
    data = put_random(cluster, bucket, "rdma-asked", (3 << 20) + 77, 91)
    c = shoal.Client(**cluster.settings(), rdma="auto")
    with c.open(f"s3://{bucket}/rdma-asked") as f:
        buf = bytearray(len(data))
        assert f.readinto(buf) == len(data) and bytes(buf) == data
    c.close()
    with pytest.raises(shoal.InvalidRequest, match="rdma_gid_address"):
        shoal.Client(**cluster.settings(), rdma="auto", rdma_gid_address="not-an-address")
