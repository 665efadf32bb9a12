"""A real local cluster for the tests: SeaweedFS, etcd and three workers started with
Tools/cluster.sh (the debug build of `shoal`, or $SHOAL_BIN), torn down at the end."""

import os
import subprocess
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from s3util import Store  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read_env(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, _, v = line.partition("=")
                out[k] = v
    return out


class Cluster:
    def __init__(self, name, port, workers=3, membership="etcd"):
        self.dir = os.path.join(ROOT, ".build", "test-tmp", "python", name)
        self.port = port
        self.workers = workers
        self.bin = os.environ.get("SHOAL_BIN") or os.path.join(ROOT, ".build", "debug", "shoal")
        env = dict(os.environ, SHOAL_BIN=self.bin)
        subprocess.run([os.path.join(ROOT, "Tools", "cluster.sh"), "start", "--workers", str(workers), "--dir", self.dir,
                        "--port", str(port), "--capacity", "1GiB", "--membership", membership],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        self.env = read_env(os.path.join(self.dir, "cluster.env"))
        self.store = Store(self.env["SHOAL_S3_ENDPOINT"], self.env["SHOAL_S3_ACCESS_KEY"], self.env["SHOAL_S3_SECRET_KEY"])

    def settings(self):
        """Client settings for this cluster (not taken from the environment)."""
        if self.env.get("SHOAL_ETCD"):
            return {"etcd": self.env["SHOAL_ETCD"], "etcd_credentials_file": self.env["SHOAL_ETCD_CREDENTIALS_FILE"],
                    "secret_file": self.env["SHOAL_SECRET_FILE"]}
        return {"members_file": self.env["SHOAL_MEMBERS_FILE"], "secret_file": self.env["SHOAL_SECRET_FILE"]}

    def worker_pid(self, i):
        with open(os.path.join(self.dir, f"w{i}", "worker.pid")) as f:
            return int(f.read().strip())

    def stop(self):
        subprocess.run([os.path.join(ROOT, "Tools", "cluster.sh"), "stop", "--dir", self.dir], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_addoption(parser):
    parser.addoption("--torch", action="store_true", help="run the PyTorch DataLoader tests (torch must be installed)")


def pytest_configure(config):
    if config.getoption("--torch"):
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise pytest.UsageError("--torch given, but torch is not installed")


@pytest.fixture(scope="session")
def cluster():
    c = Cluster("main", 21070)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def client(cluster):
    import shoal

    c = shoal.Client(**cluster.settings())
    yield c
    c.close()


@pytest.fixture
def bucket(cluster):
    """A new bucket in the store, for one test."""
    name = "py" + uuid.uuid4().hex[:12]
    cluster.store.create_bucket(name)
    return name
