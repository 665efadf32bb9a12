import json
import os
import random
import subprocess

import shoal

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_the_c_program_links_libshoal_and_passes(cluster, bucket, tmp_path):
    lib_dir = os.path.dirname(os.path.abspath(shoal._native._library_path()))
    exe = tmp_path / "libshoal_test"
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", str(exe), os.path.join(ROOT, "Tests", "libshoal", "libshoal_test.c"),
                    "-I", os.path.join(ROOT, "Sources", "CShoalABI", "include"), "-L", lib_dir, "-l:libshoal.so",
                    f"-Wl,-rpath,{lib_dir}"], check=True)
    data = random.Random(1).randbytes((5 << 20) + 333)
    cluster.store.put(bucket, "c/obj", data)
    expected = tmp_path / "expected"
    expected.write_bytes(data)
    config = ";".join(f"{k}={v}" for k, v in cluster.settings().items())
    # A manifest of the one object, as `shoal warm --manifest` writes it.
    info = shoal.Client(**cluster.settings()).stat(f"s3://{bucket}/c/obj")
    manifest = tmp_path / "c.manifest"
    manifest.write_text(json.dumps({"shoalManifest": 1, "created": "now", "prefixes": [f"s3://{bucket}/c/"], "objects": 1, "bytes": len(data)})
                        + "\n" + json.dumps({"url": f"s3://{bucket}/c/obj", "size": len(data), "etag": info.etag}) + "\n")
    r = subprocess.run([str(exe), config, f"s3://{bucket}/c/obj", str(expected), f"s3://{bucket}/c/missing", f"s3://{bucket}/c/", str(manifest)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_libshoal_needs_no_swift_runtime_curl_or_rdma(cluster):
    # One .so that loads on a host with none of the toolchain, libcurl or rdma-core.
    out = subprocess.run(["ldd", shoal._native._library_path()], capture_output=True, text=True, check=True).stdout
    needed = sorted(line.split()[0] for line in out.splitlines() if "=>" in line)
    assert not [n for n in needed if "swift" in n or "curl" in n or "ibverbs" in n or "rdmacm" in n or "uring" in n], needed
