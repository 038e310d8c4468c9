"""Local paths and gs:// URIs behind one small interface, so sources and sink never branch on scheme.

Whole files are written so that no reader ever sees half of one:

- gs:// (and any fsspec object store): one upload per object. A Cloud Storage object becomes visible
  only when its upload is finalized, so a crash leaves either the whole object or nothing.
- Plain paths, including a Cloud Storage FUSE volume mount: the bytes go to a sibling named
  `<name>.<random>.tmp`, are fsynced and closed, and the file is then renamed to its name. On a local
  disk the rename is atomic. On Cloud Storage FUSE a rename is a server-side copy followed by a delete:
  not atomic as a pair, but the copy creates the new object whole, so a `*.parquet` name still never
  holds half a file; a crash in between leaves only a `.tmp` file, which no `*.parquet` glob matches
  and which the next run of the same shard removes. The temporary name is random, not the pid,
  because every container on Cloud Run may run as pid 1 on the same mounted bucket.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.errors import OutputError

TEMP_SUFFIX = ".tmp"


def is_remote(path: str) -> bool:
    """True for object-store URIs (gs://), which have no rename and no partial files."""
    return "://" in path and not path.startswith("file://")


def _filesystem(path: str) -> Any:
    """The fsspec filesystem for a remote URI; gcsfs is only imported when a gs:// path is used."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs 2026.x probes for zonal/HNS buckets over gRPC first, which an emulator never answers.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        import fsspec
    except ImportError:
        raise OutputError(f"{path}: gs:// paths need gcsfs: pip install 'batchrun[gcs]'") from None
    protocol = path.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise OutputError(f"{path}: cannot open {protocol}:// storage ({exc}); pip install 'batchrun[gcs]'") from None


def open_read(path: str) -> IO[bytes]:
    """Open a file or object for streaming reads."""
    if is_remote(path):
        return _filesystem(path).open(path, "rb")  # type: ignore[no-any-return]
    return open(path, "rb")


def size_of(path: str) -> int:
    """The size in bytes of a file or object."""
    if is_remote(path):
        return int(_filesystem(path).size(path))
    return os.path.getsize(path)


def exists(path: str) -> bool:
    """Whether a file or object exists."""
    if is_remote(path):
        return bool(_filesystem(path).exists(path))
    return os.path.exists(path)


def join(base: str, *parts: str) -> str:
    """Join path segments for either kind of path."""
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def list_files(directory: str, suffix: str) -> list[str]:
    """Every file under `directory` (recursively) whose name ends with `suffix`, sorted."""
    if is_remote(directory):
        fs = _filesystem(directory)
        protocol = directory.split("://", 1)[0]
        fs.invalidate_cache(directory)  # other tasks write here too: never trust a cached listing
        found = fs.find(directory.rstrip("/") + "/")
        return sorted(f"{protocol}://{p}" for p in found if p.endswith(suffix))
    root = Path(directory)
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob(f"*{suffix}") if p.is_file())


def read_bytes(path: str) -> bytes:
    """A whole small file (metadata, media)."""
    with open_read(path) as handle:
        return handle.read()


@contextlib.contextmanager
def open_parquet(path: str, **options: Any) -> Iterator[pq.ParquetFile]:
    """A Parquet file for reading, closed on the thread that opened it.

    Arrow gets a native file for a local path. A remote object is a Python file object, which Arrow's
    own threads must not hold: a thread that drops the last reference to one takes the GIL, and when
    that happens as the interpreter exits, the process aborts ("terminate called without an active
    exception"). `pq.read_table` on a file object does exactly that (its dataset fragments are freed
    on Arrow's thread pool after it returns), so remote files are read on the calling thread only.
    """
    if not is_remote(path):
        with pq.ParquetFile(path, **options) as parquet:
            yield parquet
        return
    with open_read(path) as handle, pq.ParquetFile(handle, pre_buffer=False, **options) as parquet:
        yield parquet


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """The chosen columns of one Parquet file; remote objects are read by range, not downloaded whole."""
    with open_parquet(path) as parquet:
        return parquet.read(columns=columns, use_threads=not is_remote(path))


def write_once(path: str, data: bytes) -> None:
    """Write a whole file so that readers see either all of it or nothing.

    On an object store: one upload, visible only once finalized. On a plain path (a local disk or a
    Cloud Storage FUSE mount): a temporary sibling, fsynced, then renamed (see the module docstring).
    """
    if is_remote(path):
        _filesystem(path).pipe_file(path, data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temp = f"{path}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    _fsync_dir(directory)


def remove(path: str) -> None:
    """Delete a file or object if it exists."""
    if is_remote(path):
        fs = _filesystem(path)
        if fs.exists(path):
            fs.rm(path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def makedirs(path: str) -> None:
    """Create a local directory (object stores need none); fails early when it is not writable."""
    if is_remote(path):
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create the output directory ({exc.strerror}); fix output.path or its permissions",
            unwritable=True,
        ) from None


def check_writable(directory: str) -> None:
    """Fail before any request is sent when a local directory cannot take a new file (read-only, no access)."""
    if is_remote(directory):
        return
    try:
        with tempfile.TemporaryFile(dir=directory):  # unnamed where the OS allows: a crash leaves nothing
            pass
    except OSError as exc:
        raise OutputError(
            f"{directory}: cannot write to the output directory ({exc.strerror}); fix permissions and run again",
            unwritable=True,
        ) from None


def _fsync_dir(directory: str) -> None:
    """Make a rename durable, so a crash right after a flush cannot take the part file back."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
