"""ctypes bindings of libshoal (Sources/CShoalABI/include/shoal.h).

ctypes releases the GIL for the length of every call into the library, so reads from many
threads run in parallel, and a read lands straight in the caller's buffer.
"""

import ctypes
import os

ABI_VERSION = 2


class StatStruct(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint64),
        ("block_size", ctypes.c_uint32),
        ("stale", ctypes.c_int32),
        ("etag", ctypes.c_char * 260),
    ]


class ReadOp(ctypes.Structure):
    _fields_ = [
        ("file", ctypes.c_void_p),
        ("offset", ctypes.c_uint64),
        ("buffer", ctypes.c_void_p),
        ("length", ctypes.c_size_t),
        ("result", ctypes.c_int64),
    ]


LIST_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p)


def _library_path():
    explicit = os.environ.get("SHOAL_LIBRARY")
    if explicit:
        return explicit
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libshoal.so")


def _load():
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"shoal: cannot load libshoal from {path} ({e}); install the package with "
            "Tools/python.sh (it builds libshoal into the wheel), or set SHOAL_LIBRARY"
        ) from e
    sig = {
        "shoal_abi_version": (ctypes.c_int, []),
        "shoal_last_error": (ctypes.c_char_p, []),
        "shoal_last_error_code": (ctypes.c_int, []),
        "shoal_client_new": (ctypes.c_void_p, [ctypes.c_char_p]),
        "shoal_client_free": (None, [ctypes.c_void_p]),
        "shoal_stat_url": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(StatStruct)]),
        "shoal_read_object": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(StatStruct)]),
        "shoal_list": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p, LIST_FN, ctypes.c_void_p]),
        "shoal_manifest_list": (ctypes.c_int64, [ctypes.c_char_p, LIST_FN, ctypes.c_void_p]),
        "shoal_open": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        "shoal_open_version": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p]),
        "shoal_file_size": (ctypes.c_uint64, [ctypes.c_void_p]),
        "shoal_file_etag": (ctypes.c_char_p, [ctypes.c_void_p]),
        "shoal_close": (None, [ctypes.c_void_p]),
        "shoal_pread": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64]),
        # The buffer: a new bytes object the caller fills (ctypes passes a bytes object's buffer
        # for c_char_p with no copy).
        "shoal_pread_version": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p,
                                                 ctypes.c_size_t, ctypes.c_uint64]),
        "shoal_pread_batch": (ctypes.c_int64, [ctypes.POINTER(ReadOp), ctypes.c_size_t]),
    }
    # The version first: an older library lacks some of the functions bound below.
    lib.shoal_abi_version.restype = ctypes.c_int
    lib.shoal_abi_version.argtypes = []
    version = lib.shoal_abi_version()
    if version < ABI_VERSION:
        raise ImportError(f"shoal: {path} has ABI version {version}; this package needs {ABI_VERSION}")
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


def last_error():
    """The calling thread's last error: (code, message)."""
    return lib.shoal_last_error_code(), (lib.shoal_last_error() or b"").decode("utf-8", "replace")
