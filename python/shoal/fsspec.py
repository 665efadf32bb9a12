"""An fsspec filesystem for `shoal://bucket/key` (registered through the `fsspec.specs` entry
point, so `fsspec.open("shoal://...")`, pandas, pyarrow and Hugging Face datasets use it).

Read-only: the cluster is a cache of the object store, which is where data is written.
"""

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from .client import Client
from .errors import NotFound


class ShoalFileSystem(AbstractFileSystem):
    protocol = "shoal"
    root_marker = ""
    # One client (and its connections) per set of settings, as fsspec caches instances.
    cachable = True

    def __init__(self, client=None, **settings):
        super().__init__(**{k: v for k, v in settings.items() if k in ("skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths")})
        options = {k: v for k, v in settings.items() if k not in ("skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths")}
        self.client = client if client is not None else Client(**options)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        for prefix in ("shoal://", "shoal::", "s3://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
                break
        return path.rstrip("/")

    @staticmethod
    def _url(path):
        return "s3://" + path

    def _listing(self, path):
        """Every object under `path/` (the cluster lists without a delimiter)."""
        bucket, _, prefix = path.partition("/")
        key_prefix = prefix + "/" if prefix else ""
        return self.client.list(f"s3://{bucket}/{key_prefix}")

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """One listing for the whole tree (not one per folder)."""
        path = self._strip_protocol(path)
        bucket, _, prefix = path.partition("/")
        out = {}
        try:
            entries = self._listing(path)
        except FileNotFoundError:
            entries = []
        base = prefix + "/" if prefix else ""
        for e in entries:
            rest = e.key[len(base):]
            parts = rest.split("/")
            if withdirs:
                # The folders on the way, as deep as `maxdepth` allows.
                for i in range(1, len(parts) if maxdepth is None else min(len(parts), maxdepth + 1)):
                    d = f"{bucket}/{base}{'/'.join(parts[:i])}"
                    out.setdefault(d, {"name": d, "size": 0, "type": "directory"})
            if maxdepth is not None and len(parts) > maxdepth:
                continue
            name = f"{bucket}/{base}{rest}"
            out[name] = {"name": name, "size": e.size, "type": "file", "ETag": e.etag}
        if not entries and prefix:
            try:
                info = self.info(path)
                if info["type"] == "file":
                    out[path] = info
            except FileNotFoundError:
                pass
        if withdirs and entries and prefix:
            out.setdefault(path, {"name": path, "size": 0, "type": "directory"})
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if not path:
            raise NotFound("shoal:// needs a bucket: the cluster does not list buckets")
        bucket, _, prefix = path.partition("/")
        entries = self._listing(path)
        out = {}
        base = prefix + "/" if prefix else ""
        for e in entries:
            rest = e.key[len(base):]
            head, slash, _ = rest.partition("/")
            name = f"{bucket}/{base}{head}"
            if slash:
                out.setdefault(name, {"name": name, "size": 0, "type": "directory"})
            else:
                out[name] = {"name": name, "size": e.size, "type": "file", "ETag": e.etag}
        if not out:
            # Not a folder: a file by that name?
            info = self.info(path)
            return [info] if detail else [info["name"]]
        result = sorted(out.values(), key=lambda d: d["name"])
        return result if detail else [d["name"] for d in result]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        bucket, _, key = path.partition("/")
        if key:
            try:
                s = self.client.stat(self._url(path))
                return {"name": path, "size": s.size, "type": "file", "ETag": s.etag}
            except NotFound:
                pass
        b, _, prefix = path.partition("/")
        if b and self.client.list(f"s3://{b}/{prefix + '/' if prefix else ''}", limit=1):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise NotImplementedError("shoal:// is read-only: write to the object store itself")
        path = self._strip_protocol(path)
        return ShoalBufferedFile(self, path, mode, block_size=block_size or "default", cache_options=cache_options, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        url = self._url(path)
        if start is None and end is None:
            return self.client.read(url)
        with self.client.open(url, read_ahead=False) as f:
            start, end = _resolve(start, end, f.size)
            out = bytearray(max(0, end - start))
            n = f.pread_into(out, start) if out else 0
            return bytes(out[:n])

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        """All ranges in one batched read (parallel across workers)."""
        if not (len(paths) == len(starts) == len(ends)):
            raise ValueError("paths, starts and ends must be of the same length")
        files = {}
        requests = []
        try:
            for p, s, e in zip(paths, starts, ends):
                p = self._strip_protocol(p)
                if p not in files:
                    files[p] = self.client.open(self._url(p), read_ahead=False)
                f = files[p]
                s, e = _resolve(s, e, f.size)
                requests.append((f, s, max(0, e - s)))
            results = self.client.read_batch(requests, return_exceptions=on_error == "return")
        finally:
            for f in files.values():
                f.close()
        return results


def _resolve(start, end, size):
    start = 0 if start is None else start
    end = size if end is None else end
    if start < 0:
        start = max(0, size + start)
    if end < 0:
        end = max(0, size + end)
    return min(start, size), min(end, size)


class ShoalBufferedFile(AbstractBufferedFile):
    def __init__(self, fs, path, mode="rb", **kwargs):
        self._shoal = fs.client.open(fs._url(path), read_ahead=False)
        super().__init__(fs, path, mode, size=self._shoal.size, **kwargs)
        self.details = {"name": path, "size": self._shoal.size, "type": "file", "ETag": self._shoal.etag}

    def _fetch_range(self, start, end):
        end = min(end, self._shoal.size)
        if end <= start:
            return b""
        out = bytearray(end - start)
        n = self._shoal.pread_into(out, start)
        return bytes(out[:n])

    def close(self):
        super().close()
        self._shoal.close()
