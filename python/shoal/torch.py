"""PyTorch datasets over a Shoal cluster, in the shape of s3torchconnector's.

    dataset = ShoalMapDataset.from_prefix("s3://bucket/train/", transform=decode)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=4)

Each sample is an object; `transform(ShoalSample)` makes it what the model takes (default: the
sample itself, with `.url`, `.key` and `.data`). The listing is made once, in the process that
builds the dataset, and its versions are used as they are: a worker process reads each object
in one round trip (no STAT), and every epoch reads the same versions. A forked DataLoader worker
makes its own connections on its first read; a spawned one gets the dataset pickled (settings,
not connections).

torch is imported only if installed: without it these classes are plain Python datasets (map-
style: `__len__`, `__getitem__`; iterable: `__iter__`), which the tests use too.
"""

import os

from .client import Client, ObjectInfo

try:  # pragma: no cover - depends on the environment
    import torch.utils.data as _tud

    _MapBase, _IterBase = _tud.Dataset, _tud.IterableDataset

    def _worker_info():
        info = _tud.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)
except ImportError:  # pragma: no cover
    _MapBase, _IterBase = object, object

    def _worker_info():
        return (0, 1)


class ShoalSample:
    """One object of a dataset: its URL, key and bytes."""

    __slots__ = ("url", "key", "data")

    def __init__(self, url, key, data):
        self.url, self.key, self.data = url, key, data

    def __repr__(self):
        return f"ShoalSample(url={self.url!r}, {len(self.data)} bytes)"


def _identity(sample):
    return sample


def _rank():
    """(rank, world size) of a distributed job, from torch.distributed or the usual variables."""
    try:  # pragma: no cover
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _Base:
    def __init__(self, objects, client=None, transform=_identity, settings=None):
        self._objects = list(objects)
        self._settings = dict(settings or {})
        self._client = client
        self.transform = transform

    @classmethod
    def from_prefix(cls, prefix_url, client=None, transform=_identity, **settings):
        """Every object under s3://bucket/prefix (listed once, here)."""
        c = client if client is not None else Client(**settings)
        return cls(c.list(prefix_url), client=c, transform=transform, settings=settings)

    @classmethod
    def from_objects(cls, urls, client=None, transform=_identity, **settings):
        """The objects given: URLs (their versions are looked up here, once) or ObjectInfos."""
        c = client if client is not None else Client(**settings)
        objects = [u if isinstance(u, ObjectInfo) else c.stat(u) for u in urls]
        return cls(objects, client=c, transform=transform, settings=settings)

    @property
    def client(self):
        if self._client is None:
            self._client = Client(**self._settings)
        return self._client

    def __getstate__(self):
        # Pickled (spawned workers) without its connections: the other side makes its own.
        state = dict(self.__dict__)
        if self._client is not None and not self._settings:
            state["_settings"] = dict(self._client._settings)
        state["_client"] = None
        return state

    def _read(self, info):
        return self.transform(ShoalSample(info.url, info.key, self.client.read(info.url, version=info)))


class ShoalMapDataset(_Base, _MapBase):
    """A map-style dataset: sample `i` is the `i`-th object in key order."""

    def __len__(self):
        return len(self._objects)

    def __getitem__(self, i):
        return self._read(self._objects[i])

    def __getitems__(self, indices):
        """A batch of samples in one batched read (DataLoader calls this with a batch sampler)."""
        infos = [self._objects[i] for i in indices]
        datas = self.client.read_batch([(info, 0, info.size) for info in infos]) if infos else []
        return [self.transform(ShoalSample(info.url, info.key, d)) for info, d in zip(infos, datas)]


class ShoalIterableDataset(_Base, _IterBase):
    """An iterable dataset; with `enable_sharding`, each DataLoader worker of each rank reads
    its own share of the objects (object i goes to shard i mod (workers × world size))."""

    def __init__(self, objects, client=None, transform=_identity, settings=None, enable_sharding=True):
        super().__init__(objects, client=client, transform=transform, settings=settings)
        self.enable_sharding = enable_sharding

    def shard(self):
        """The objects this process reads."""
        if not self.enable_sharding:
            return self._objects
        worker, workers = _worker_info()
        rank, world = _rank()
        shards = workers * world
        me = rank * workers + worker
        return self._objects[me::shards]

    def __iter__(self):
        for info in self.shard():
            yield self._read(info)
