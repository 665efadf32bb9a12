"""The datasets, with and without torch: a real DataLoader with forked workers when torch is
installed (`Tools/test.sh --torch` installs it), and the same sharding driven by hand when not."""

import importlib.util
import multiprocessing
import random

import pytest

from shoal.torch import ShoalIterableDataset, ShoalMapDataset

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture
def samples(cluster, bucket):
    datas = {f"train/{i:04}.bin": random.Random(i).randbytes(2000 + i) for i in range(40)}
    for k, v in datas.items():
        cluster.store.put(bucket, k, v)
    cluster.store.put(bucket, "val/0.bin", b"not in train")
    return bucket, datas


def test_map_dataset_from_prefix_and_objects(cluster, samples):
    bucket, datas = samples
    ds = ShoalMapDataset.from_prefix(f"s3://{bucket}/train/", **cluster.settings())
    assert len(ds) == len(datas)
    assert [ds[i].data for i in range(len(ds))] == list(datas.values())
    assert [s.data for s in ds.__getitems__([3, 1, 39])] == [datas[f"train/{i:04}.bin"] for i in (3, 1, 39)]
    picked = ShoalMapDataset.from_objects([f"s3://{bucket}/train/0005.bin", f"s3://{bucket}/val/0.bin"],
                                          transform=lambda s: len(s.data), **cluster.settings())
    assert [picked[0], picked[1]] == [len(datas["train/0005.bin"]), len(b"not in train")]


def _shard_keys(args):
    ds, worker, workers, rank, world = args
    import shoal.torch as st

    st._worker_info = lambda: (worker, workers)
    st._rank = lambda: (rank, world)
    return [s.key for s in ds]


def test_iterable_dataset_shards_across_workers_and_ranks_in_forked_processes(cluster, samples):
    bucket, datas = samples
    ds = ShoalIterableDataset.from_prefix(f"s3://{bucket}/train/", **cluster.settings())
    assert [s.key for s in ds] == list(datas)  # one process: everything
    jobs = [(ds, w, 2, r, 2) for r in range(2) for w in range(2)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        shards = pool.map(_shard_keys, jobs)
    assert sorted(k for shard in shards for k in shard) == sorted(datas)
    assert all(shards) and len({tuple(s) for s in shards}) == 4  # disjoint, none empty


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed: `Tools/test.sh --torch` runs these (see README)")
@pytest.mark.parametrize("workers", [0, 2])
def test_under_a_real_dataloader_with_forked_workers(cluster, samples, workers):
    import torch.utils.data as tud

    bucket, datas = samples
    ds = ShoalMapDataset.from_prefix(f"s3://{bucket}/train/", transform=lambda s: s.data, **cluster.settings())
    ds.client.read(ds._objects[0].url)  # the parent used the client before forking
    loader = tud.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=list,
                            multiprocessing_context="fork" if workers else None)
    got = [b for batch in loader for b in batch]
    assert got == list(datas.values())
    it = ShoalIterableDataset.from_prefix(f"s3://{bucket}/train/", transform=lambda s: s.key, **cluster.settings())
    loader = tud.DataLoader(it, batch_size=None, num_workers=workers, multiprocessing_context="fork" if workers else None)
    assert sorted(loader) == sorted(datas)
