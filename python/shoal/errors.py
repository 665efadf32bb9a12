"""Exceptions: one class per kind of failure, each carrying the library's message.

They also derive from the matching built-in exception, so `except FileNotFoundError` and
`except PermissionError` work as they do for local files.
"""


class ShoalError(Exception):
    """Any failure of a Shoal call. `code` is the library's (negative) error code."""

    def __init__(self, message, code=0):
        super().__init__(message)
        self.code = code


class InvalidRequest(ShoalError, ValueError):
    """A bad argument, URL or configuration."""


class NotFound(ShoalError, FileNotFoundError):
    """No such object, bucket or store."""


class AccessDenied(ShoalError, PermissionError):
    """The store refuses the workers' credentials, or the workers refuse the cluster secret."""


class VersionChanged(ShoalError):
    """The object changed in the store since it was opened: open it again."""


class ClusterUnreachable(ShoalError, ConnectionError):
    """No worker that holds the data (nor its fallback) can be reached."""


class Timeout(ClusterUnreachable, TimeoutError):
    """A worker did not answer in time."""


class StoreUnavailable(ShoalError, ConnectionError):
    """The object store cannot be reached, and the cache does not hold the data."""


class IntegrityError(ShoalError):
    """Bytes arrived damaged or a frame failed authentication; nothing damaged was returned."""


_BY_CODE = {
    -1: InvalidRequest,
    -2: AccessDenied,
    -4: NotFound,
    -5: AccessDenied,
    -6: VersionChanged,
    -7: StoreUnavailable,
    -9: InvalidRequest,
    -10: NotFound,
    -12: IntegrityError,
    -13: Timeout,
    -14: ClusterUnreachable,
    -15: IntegrityError,
}


def error_for(code, message):
    """The exception for a library error code."""
    return _BY_CODE.get(code, ShoalError)(message, code)
