"""Shoal's Python client: read training data through a Shoal cluster.

    import shoal
    client = shoal.Client()                      # settings from SHOAL_ETCD, SHOAL_SECRET_FILE, ...
    with client.open("s3://bucket/train/000.tar") as f:
        header = f.read(512)
    data = client.read("s3://bucket/labels.json")

fsspec: `fsspec.open("shoal://bucket/key")` (and pandas, pyarrow, Hugging Face datasets through
it). PyTorch: `shoal.torch.ShoalMapDataset` and `ShoalIterableDataset`.
"""

from .client import Client, ObjectInfo, ShoalFile, alloc_buffer, read_manifest
from .errors import (
    AccessDenied,
    ClusterUnreachable,
    IntegrityError,
    InvalidRequest,
    NotFound,
    ShoalError,
    StoreUnavailable,
    Timeout,
    VersionChanged,
)

__all__ = [
    "Client", "ObjectInfo", "ShoalFile", "alloc_buffer", "read_manifest",
    "ShoalError", "InvalidRequest", "NotFound", "AccessDenied", "VersionChanged", "ClusterUnreachable", "Timeout",
    "StoreUnavailable", "IntegrityError",
]
__version__ = "0.1.0"
