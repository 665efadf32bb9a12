"""The client: a cluster's objects as files."""

import ctypes
import io
import mmap
import os
import threading
import weakref

from . import _native
from ._native import lib
from .errors import InvalidRequest, ShoalError, error_for

_SETTINGS = (
    "workers", "members_file", "etcd", "etcd_prefix", "etcd_credentials_file", "secret_file", "tls_ca_file",
    "view_discovery", "connections", "timeout_ms", "connect_timeout_ms", "hedge_after_ms", "client_name",
    "rdma", "rdma_gid_address",
)


def _raise_last():
    code, message = _native.last_error()
    raise error_for(code, message)


def _check(result):
    """A call's result, or its error raised."""
    if result < 0:
        _raise_last()
    return result


class ObjectInfo:
    """An object's version: `url`, `key`, `size`, `etag` (and `block_size`, `stale` from stat)."""

    __slots__ = ("url", "key", "size", "etag", "block_size", "stale")

    def __init__(self, url, key, size, etag, block_size=0, stale=False):
        self.url, self.key, self.size, self.etag = url, key, size, etag
        self.block_size, self.stale = block_size, stale

    def __repr__(self):
        return f"ObjectInfo(url={self.url!r}, size={self.size}, etag={self.etag!r})"

    def __eq__(self, other):
        return isinstance(other, ObjectInfo) and (self.url, self.size, self.etag) == (other.url, other.size, other.etag)

    def __hash__(self):
        return hash((self.url, self.size, self.etag))


def _c_url(url):  # also a path: a str without NUL
    """`url` as libshoal takes it (NUL-terminated UTF-8); anything else is InvalidRequest, never
    a URL cut short at a NUL."""
    if not isinstance(url, str):
        raise InvalidRequest(f"{url!r} is not an s3:// URL string")
    if "\0" in url:
        raise InvalidRequest(f"{url!r} holds a NUL character")
    return url.encode()


def split_url(url):
    """(store-and-bucket part, key) of s3://[store@]bucket/key."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise InvalidRequest(f"{url!r} is not an s3:// URL (expected s3://bucket/key)")
    rest = url[5:]
    bucket, _, key = rest.partition("/")
    return bucket, key


def read_manifest(path):
    """The objects of a dataset manifest (`shoal warm --manifest FILE`, docs/MANIFEST.md), each
    an ObjectInfo at the version it was warmed at: open or read them with `version=` (no round
    trip, and every read is of that version: a changed object raises VersionChanged), or give
    them to `read_batch` or a dataset's `from_objects`."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidRequest(f"{path!r} is not a path")
    found = []
    failure = []

    def each(_context, url, size, etag):
        try:
            u = url.decode()
            found.append(ObjectInfo(u, split_url(u)[1], size, etag.decode()))
            return 0
        except BaseException as e:  # never let an exception cross the C frame
            failure.append(e)
            return 1

    callback = _native.LIST_FN(each)
    _check(lib.shoal_manifest_list(_c_url(os.fspath(path)), callback, None))
    if failure:
        raise failure[0]
    return found


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]


def _result_buffer(n):
    """A buffer for a read of `n` bytes that becomes its result with no copy, and its address:
    a new bytes object, not yet filled (no zeroing), that nobody else sees before it is; below
    2 bytes (CPython shares those bytes objects) a bytearray."""
    if n >= 2:
        b = _new_bytes(None, n)
        return b, ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value
    b = bytearray(n)
    return b, (ctypes.addressof((ctypes.c_char * n).from_buffer(b)) if n else None)


def _result(buffer, n):
    """The bytes read into a `_result_buffer` (`n` of them)."""
    return buffer if n == len(buffer) and isinstance(buffer, bytes) else bytes(buffer[:n])


def _span(url, offset, length, size):
    """How many bytes a read of `length` (None: to the end) at `offset` gets of an object of
    `size` bytes."""
    if offset < 0 or (length is not None and length < 0):
        raise InvalidRequest(f"{url}: a negative offset or length ({offset}, {length})")
    rest = max(0, size - offset)
    return rest if length is None else min(length, rest)


def alloc_buffer(size):
    """A writable buffer for large reads: anonymous memory advised to use huge pages, so the
    kernel copies a reply into it with a fraction of the TLB misses of a bytearray's 4 KiB
    pages (15-25% faster here for 64 MiB reads). Use it with `readinto`/`pread_into`."""
    m = mmap.mmap(-1, max(1, size))
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # advice only
    return m


class _Buffer:
    """A writable buffer's address and length, for as long as the object is alive."""

    __slots__ = ("view", "holder", "address", "length", "memory")

    def __init__(self, buffer):
        view = memoryview(buffer)
        if view.readonly:
            view.release()
            raise TypeError("a read needs a writable buffer (bytearray, memoryview, numpy array), not a read-only one")
        if not view.c_contiguous:
            view.release()
            raise ValueError("a read needs a contiguous buffer")
        self.length = view.nbytes
        if view.format != "B" or view.ndim != 1:
            flat = view.cast("B")
            view.release()
            view = flat
        self.view = view
        if self.length == 0:
            self.holder, self.address = None, None
        else:
            self.holder = (ctypes.c_char * self.length).from_buffer(view)
            self.address = ctypes.addressof(self.holder)

    def release(self):
        self.holder = None
        self.view.release()


class _ReadAheadBudget:
    """Bytes of read-ahead buffers the process may hold at once (SHOAL_READAHEAD_BUDGET, default
    256 MiB): a file past the budget reads without read-ahead rather than growing the process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.limit = int(os.environ.get("SHOAL_READAHEAD_BUDGET", str(256 << 20)))
        self.used = 0

    def take(self, n):
        with self.lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n):
        with self.lock:
            self.used = max(0, self.used - n)


read_ahead_budget = _ReadAheadBudget()
_local = threading.local()


def _scratch():
    """This thread's scratch block for reads of unknown size (4 MiB, huge-page memory)."""
    s = getattr(_local, "scratch", None)
    if s is None:
        memory = alloc_buffer(Client.FIRST_READ)
        s = _Buffer(memory)
        s.memory = memory
        _local.scratch = s
    return s


_open_files = weakref.WeakSet()


def _reset_after_fork():
    # A lock held by another thread at fork would never be released in the child.
    read_ahead_budget.lock = threading.Lock()
    for f in list(_open_files):
        f._lock = threading.Lock()
        f._idle = threading.Condition(threading.Lock())
        f._calls = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class Client:
    """A connection to a Shoal cluster. Settings not given come from the environment
    (SHOAL_ETCD, SHOAL_SECRET_FILE, ... as the `shoal` command reads them).

    Safe to share between threads, and across fork: a forked child (a DataLoader worker)
    makes its own connections on its first read.
    """

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise InvalidRequest(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(_SETTINGS)})")
        lines = []
        for key, value in settings.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            text = str(value)
            if "\n" in text or "\0" in text:
                raise InvalidRequest(f"setting {key!r} holds a newline or a NUL")
            lines.append(f"{key}={text}")
        self._settings = dict(settings)
        handle = lib.shoal_client_new(("\n".join(lines) + "\n").encode())
        if not handle:
            _raise_last()
        self._handle = handle

    def __getstate__(self):
        # Pickled (to spawned DataLoader workers) as its settings: the other side connects anew.
        return self._settings

    def __setstate__(self, settings):
        self.__init__(**settings)

    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib.shoal_client_free(handle)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def handle(self):
        if not self._handle:
            raise ShoalError("the client is closed")
        return self._handle

    def stat(self, url):
        """The object's current version (size, etag)."""
        out = _native.StatStruct()
        _check(lib.shoal_stat_url(self.handle, _c_url(url), ctypes.byref(out)))
        _, key = split_url(url)
        return ObjectInfo(url, key, out.size, out.etag.decode(), out.block_size, bool(out.stale))

    def list(self, prefix_url, limit=None):
        """Every object under s3://bucket/prefix (the first `limit`), in key order, with its
        version."""
        bucket, _ = split_url(prefix_url)
        found = []
        failure = []

        def each(_context, key, size, etag):
            try:
                k = key.decode()
                found.append(ObjectInfo(f"s3://{bucket}/{k}", k, size, etag.decode()))
                return 1 if limit is not None and len(found) >= limit else 0
            except BaseException as e:  # never let an exception cross the C frame
                failure.append(e)
                return 1

        callback = _native.LIST_FN(each)
        _check(lib.shoal_list(self.handle, _c_url(prefix_url), callback, None))
        if failure:
            raise failure[0]
        return found

    @staticmethod
    def _version(url, version):
        """(size, etag) of a version given as an ObjectInfo or (size, etag)."""
        if isinstance(version, ObjectInfo):
            size, etag = version.size, version.etag
        elif isinstance(version, (tuple, list)) and len(version) == 2:
            size, etag = version
        else:
            raise InvalidRequest(f"{url}: a version is an ObjectInfo (from list or stat) or (size, etag), not {version!r}")
        if not isinstance(size, int) or size < 0:
            raise InvalidRequest(f"{url}: a version's size must be a whole number of 0 or more, not {size!r}")
        return int(size), str(etag)

    def _open_handle(self, url, version):
        """libshoal's file handle: at the current version, or at `version` with no round trip."""
        if version is None:
            handle = lib.shoal_open(self.handle, _c_url(url))
        else:
            size, etag = self._version(url, version)
            handle = lib.shoal_open_version(self.handle, _c_url(url), size, _c_url(etag))
        if not handle:
            _raise_last()
        return handle

    def open(self, url, version=None, read_ahead=True):
        """A file object on the object at its current version, or at `version` (an ObjectInfo
        from `list`, or (size, etag)) with no round trip to the cluster."""
        return ShoalFile(self, url, self._open_handle(url, version), read_ahead=read_ahead)

    FIRST_READ = 4 << 20

    def read(self, url, offset=0, length=None, version=None):
        """Bytes of an object (all of it from `offset` by default). One round trip for an
        object of up to a block: with `version` (an ObjectInfo from `list`, or (size, etag)),
        or from the start knowing only the URL (the worker resolves the version and sends it
        with the bytes)."""
        if version is None and offset == 0 and (length is None or length >= 2):
            return self._read_by_name(url, length)
        if version is not None:
            # One call into libshoal (open, read and close there): small objects read one by one
            # pay for each ctypes call and its turn of the GIL.
            size, etag = self._version(url, version)
            handle, c_url, c_etag = self.handle, _c_url(url), _c_url(etag)  # a closed client, a bad URL: raised even for 0 bytes
            length = _span(url, offset, length, size)
            if length == 0:
                return b""
            # A new bytes object of at least 2 bytes (CPython shares shorter ones; a 1-byte read
            # is then copied out), handed to C as it is (ctypes passes its buffer).
            out = _new_bytes(None, max(2, length))
            return _result(out, _check(lib.shoal_pread_version(handle, c_url, size, c_etag, out, length, offset)))
        handle = self._open_handle(url, version)
        try:
            length = _span(url, offset, length, lib.shoal_file_size(handle))
            if length == 0:
                return b""
            out, address = _result_buffer(length)
            return _result(out, _check(lib.shoal_pread(handle, address, length, offset)))
        finally:
            lib.shoal_close(handle)

    def _read_by_name(self, url, length):
        want = self.FIRST_READ if length is None else min(length, self.FIRST_READ)
        st = _native.StatStruct()
        if length is None:
            # The size is not known yet: into this thread's scratch block, then copied out (a
            # new 4 MiB object per read would cost more than the copy of a small one).
            scratch = _scratch()
            n = _check(lib.shoal_read_object(self.handle, _c_url(url), scratch.address, want, ctypes.byref(st)))
            out = ctypes.string_at(scratch.address, n)
        else:
            out, address = _result_buffer(want)
            n = _check(lib.shoal_read_object(self.handle, _c_url(url), address, want, ctypes.byref(st)))
            out = _result(out, n)
        total = st.size if length is None else min(length, st.size)
        if n >= total:
            return out
        # Longer than the first read: the rest at the version just read.
        rest = self.read(url, offset=n, length=total - n, version=(st.size, st.etag.decode()))
        return out[:n] + rest

    def read_batch(self, requests, return_exceptions=False):
        """Reads many ranges of many objects in one call: [(file or url, offset, length)] ->
        [bytes]. Small objects on different workers are fetched in parallel, each worker's
        share pipelined. A target is a ShoalFile, an ObjectInfo (from `list`: opened at that
        version, no round trip) or a URL. A failed range raises (or, with `return_exceptions`,
        is its exception)."""
        # Targets that are not files get a libshoal handle of their own, not a file object: for a
        # batch of small objects, making and closing those cost more than the reads.
        opened = []  # handles opened here
        entered = []  # files whose handles are in use
        try:
            targets = []  # (url, size, handle)
            for target, _, _ in requests:
                if isinstance(target, ShoalFile):
                    handle = target._enter()
                    entered.append(target)
                    targets.append((target.url, target.size, handle))
                else:
                    listed = isinstance(target, ObjectInfo)
                    url = target.url if listed else target
                    handle = self._open_handle(url, target if listed else None)
                    opened.append(handle)
                    targets.append((url, target.size if listed else lib.shoal_file_size(handle), handle))
            buffers = []
            ops = (_native.ReadOp * len(requests))()
            for i, ((_, offset, length), (url, size, handle)) in enumerate(zip(requests, targets)):
                length = _span(url, offset, length, size)
                b, address = _result_buffer(length)
                buffers.append(b)
                ops[i].file = handle
                ops[i].offset = offset
                ops[i].length = length
                ops[i].buffer = address
            if requests:
                rc = lib.shoal_pread_batch(ops, len(requests))
                if rc < 0 and all(ops[i].result == 0 for i in range(len(requests))):
                    _raise_last()
            out = []
            for i, b in enumerate(buffers):
                r = ops[i].result
                if r < 0:
                    e = error_for(int(r), f"{targets[i][0]}: read of {len(b)} bytes at {requests[i][1]} failed ({int(r)})")
                    if not return_exceptions:
                        raise e
                    out.append(e)
                else:
                    out.append(_result(b, r))
            return out
        finally:
            for f in entered:
                f._leave()
            for handle in opened:
                lib.shoal_close(handle)


class ShoalFile(io.RawIOBase):
    """An object opened at one version, read like a local file opened "rb".

    `readinto` writes straight into the caller's buffer (bytearray, memoryview, numpy array):
    large reads are fetched as parallel block requests with no copy. Small sequential reads are
    served from a read-ahead window (one block ahead, from a process-wide budget).
    """

    READ_AHEAD = 8 << 20

    def __init__(self, client, url, handle, read_ahead=True):
        super().__init__()
        self._client = client
        self._handle = handle
        self.url = url
        self.size = lib.shoal_file_size(handle)
        self.etag = (lib.shoal_file_etag(handle) or b"").decode()
        self._pos = 0
        self._lock = threading.Lock()  # the position and the read-ahead window
        self._idle = threading.Condition(threading.Lock())  # calls into libshoal running now
        self._calls = 0
        self._ra = None  # (bytearray, start, length)
        self._ra_on = read_ahead
        self._last_end = None
        _open_files.add(self)

    def _enter(self):
        """The handle, counted as in use until `_leave`: close waits for it."""
        with self._idle:
            if not self._handle:
                raise ValueError("I/O operation on closed file")
            self._calls += 1
            return self._handle

    def _leave(self):
        with self._idle:
            self._calls -= 1
            if self._calls == 0:
                self._idle.notify_all()

    def _pread(self, address, length, offset):
        if offset < 0:
            raise InvalidRequest(f"{self.url}: a negative offset ({offset})")
        handle = self._enter()
        try:
            return _check(lib.shoal_pread(handle, address, length, offset))
        finally:
            self._leave()

    # io.RawIOBase

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def pread_into(self, buffer, offset):
        """Reads into `buffer` at `offset` (not moving the position); returns the count."""
        b = _Buffer(buffer)
        try:
            if b.length == 0:
                return 0
            return self._pread(b.address, b.length, offset)
        finally:
            b.release()

    def readinto(self, buffer):
        with self._lock:
            n = self._readinto_at(buffer, self._pos)
            self._pos += n
            return n

    def _readinto_at(self, buffer, pos):
        view = memoryview(buffer).cast("B") if not isinstance(buffer, (bytearray,)) else memoryview(buffer)
        try:
            want = min(view.nbytes, max(0, self.size - pos))
            if want == 0:
                return 0
            ra = self._ra
            if ra is not None and ra[1] <= pos and pos + want <= ra[1] + ra[2]:
                start = pos - ra[1]
                view[:want] = ra[0][start:start + want]
                self._last_end = pos + want
                return want
            sequential = self._last_end == pos
            self._last_end = pos + want
            if self._ra_on and sequential and want < self.READ_AHEAD // 2 and self._ensure_window():
                buf = self._ra[0]
                self._ra = (buf, 0, 0)  # empty until the read has landed whole
                n = self.pread_into(buf, pos)
                self._ra = (buf, pos, n)
                got = min(n, want)
                view[:got] = buf[:got]
                return got
            return self.pread_into(view[:want], pos)
        finally:
            view.release()

    def _ensure_window(self):
        if self._ra is not None:
            return True
        size = min(self.READ_AHEAD, self.size)
        if size <= 0 or not read_ahead_budget.take(size):
            return False
        self._ra = (bytearray(size), 0, 0)
        return True

    def read(self, size=-1):
        with self._lock:
            if size is None or size < 0:
                size = max(0, self.size - self._pos)
            want = min(size, max(0, self.size - self._pos))
            if want >= max(2, self.READ_AHEAD // 2):
                # Large: straight into the result (no read-ahead window to fill).
                out, address = _result_buffer(want)
                n = self._pread(address, want, self._pos)
                self._last_end = self._pos + n
                self._pos += n
                return _result(out, n)
            out = bytearray(want)
            n = self._readinto_at(out, self._pos) if out else 0
            self._pos += n
            return bytes(out) if n == len(out) else bytes(out[:n])

    def readall(self):
        return self.read(-1)

    def close(self):
        """Closes the file once the reads running on it (in other threads) are done."""
        with self._lock:
            with self._idle:
                handle, self._handle = self._handle, None
                while self._calls:
                    self._idle.wait()
            if handle:
                lib.shoal_close(handle)
                if self._ra is not None:
                    read_ahead_budget.give(len(self._ra[0]))
                    self._ra = None
        super().close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
