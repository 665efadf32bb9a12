import io
import uuid

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.tests.abstract import AbstractFixtures, AbstractGetTests

from shoal.fsspec import ShoalFileSystem


@pytest.fixture
def fs(cluster):
    return fsspec.filesystem("shoal", skip_instance_cache=True, **cluster.settings())


def test_the_protocol_is_registered_through_the_entry_point():
    assert fsspec.get_filesystem_class("shoal") is ShoalFileSystem


def test_open_ls_info_and_ranges(cluster, fs, bucket):
    cluster.store.put(bucket, "d/a.bin", bytes(range(256)) * 4)
    cluster.store.put(bucket, "d/sub/b.bin", b"hello")
    with fsspec.open(f"shoal://{bucket}/d/a.bin", "rb", **cluster.settings()) as f:
        assert f.read(10) == bytes(range(10))
        f.seek(1000)
        assert f.read() == (bytes(range(256)) * 4)[1000:]
    assert fs.ls(f"{bucket}/d", detail=False) == [f"{bucket}/d/a.bin", f"{bucket}/d/sub"]
    info = fs.info(f"shoal://{bucket}/d/a.bin")
    assert info["size"] == 1024 and info["type"] == "file"
    assert fs.info(f"{bucket}/d/sub")["type"] == "directory"
    assert fs.cat_file(f"{bucket}/d/a.bin", start=10, end=20) == bytes(range(10, 20))
    assert fs.cat_file(f"{bucket}/d/sub/b.bin", start=-3) == b"llo"
    assert fs.cat_ranges([f"{bucket}/d/a.bin", f"{bucket}/d/sub/b.bin"], [0, 1], [3, 5]) == [bytes([0, 1, 2]), b"ello"]
    assert fs.find(f"{bucket}/d") == [f"{bucket}/d/a.bin", f"{bucket}/d/sub/b.bin"]
    with pytest.raises(FileNotFoundError):
        fs.info(f"{bucket}/nothing")
    with pytest.raises(NotImplementedError):
        fs.open(f"{bucket}/d/new", "wb")


def test_pandas_and_pyarrow_read_parquet_through_a_shoal_url(cluster, bucket):
    df = pd.DataFrame({"id": range(50_000), "label": [f"item-{i % 97}" for i in range(50_000)], "x": [i * 0.5 for i in range(50_000)]})
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df), sink, row_group_size=10_000)
    cluster.store.put(bucket, "tables/t.parquet", sink.getvalue())
    url = f"shoal://{bucket}/tables/t.parquet"
    back = pd.read_parquet(url, storage_options=cluster.settings())
    pd.testing.assert_frame_equal(back, df)
    fs = fsspec.filesystem("shoal", **cluster.settings())
    table = pq.read_table(f"{bucket}/tables/t.parquet", filesystem=fs, columns=["x"])
    assert table.column("x").to_pylist() == df["x"].tolist()


class StoreBackedShoal(ShoalFileSystem):
    """The filesystem under test, for fsspec's own test suite: its fixtures write their files
    into the object store directly (Shoal is a read cache, with no write path); every read,
    listing and copy the tests check goes through Shoal."""

    def __init__(self, cluster, **kw):
        super().__init__(**cluster.settings(), skip_instance_cache=True)
        self.store = cluster.store

    def _split(self, path):
        path = self._strip_protocol(path)
        bucket, _, key = path.partition("/")
        return bucket, key

    def makedirs(self, path, exist_ok=False):
        pass  # object stores have no folders

    def mkdir(self, path, create_parents=True, **kwargs):
        pass

    def touch(self, path, truncate=True, **kwargs):
        self.store.put(*self._split(path), b"")

    def pipe_file(self, path, value, **kwargs):
        self.store.put(*self._split(path), value)

    def rm(self, path, recursive=False, maxdepth=None):
        for p in [path] if isinstance(path, str) else path:
            names = self.find(p) if recursive else [self._strip_protocol(p)]
            for name in names:
                self.store.delete(*self._split(name))


class TestFsspecAbstractGet(AbstractFixtures, AbstractGetTests):
    """fsspec's read-side suite (get: remote to local; the copy, put and open suites write)."""

    @pytest.fixture
    def fs(self, cluster):
        return StoreBackedShoal(cluster)

    @pytest.fixture
    def fs_path(self, cluster):
        # A new folder per test: the workers' metadata cache never sees a name reused.
        bucket = "pyabstract"
        cluster.store.create_bucket(bucket)
        return f"{bucket}/{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def fs_join(self):
        return lambda *parts: "/".join(p.rstrip("/") for p in parts)

    @pytest.fixture
    def supports_empty_directories(self):
        return False
