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
import logging
import os
import posixpath
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from batchrun.errors import OutputError, StorageError

if TYPE_CHECKING:
    import pyarrow.parquet as pq

T = TypeVar("T")

TEMP_SUFFIX = ".tmp"


def is_remote(path: str) -> bool:
    """True for object-store URIs (gs://), which have no rename and no partial files."""
    return "://" in path and not path.startswith("file://")


def _filesystem(path: str) -> Any:
    """The fsspec filesystem for a remote URI; gcsfs is only imported when a gs:// path is used."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs 2026.x probes for zonal/HNS buckets over gRPC first, which an emulator never answers.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    protocol = path.split("://", 1)[0]
    try:
        import fsspec

        filesystem = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"{path}: cannot open {protocol}:// storage ({exc}); gs:// needs gcsfs, which batchrun installs: "
            "reinstall it from its checkout (pip install .)"
        ) from exc
    # gcsfs logs a whole traceback when it gives up; _remote turns that failure into one line instead.
    logging.getLogger("gcsfs").addFilter(_drop_give_up_records)
    return filesystem


def _drop_give_up_records(record: logging.LogRecord) -> bool:
    """False for gcsfs's 'out of retries' / 'non-retriable' records, whose failure is raised as one clear line."""
    message = record.getMessage()
    return "out of retries" not in message and "non-retriable exception" not in message


def _remote(path: str, operation: Callable[[Any], T]) -> T:
    """Run one gcsfs call, turning a missing bucket, refused access or unreachable storage into a StorageError."""
    fs = _filesystem(path)
    try:
        return operation(fs)
    except FileNotFoundError as exc:
        bucket = _bucket(path)
        if _remote(path, lambda f: f.exists(bucket)):
            raise  # the object is missing, not the bucket: the caller says what that means
        raise _no_bucket(path, bucket) from exc
    except Exception as exc:
        failure = _storage_failure(path, fs, exc)
        if failure is None:
            raise
        raise failure from exc


def _no_bucket(path: str, bucket: str) -> StorageError:
    """The one-line error for a path in a bucket that does not exist."""
    return StorageError(
        f"{path}: Cloud Storage bucket '{bucket}' does not exist; create it "
        f"(gcloud storage buckets create gs://{bucket}) or fix the path"
    )


def _bucket(path: str) -> str:
    """The bucket of a gs:// URI."""
    return path.split("://", 1)[1].split("/", 1)[0]


def _storage_failure(path: str, fs: Any, exc: Exception) -> StorageError | None:
    """The one-line error for a failed gcsfs call, or None for an exception that is not a storage failure."""
    import aiohttp
    import requests
    from google.auth.exceptions import GoogleAuthError

    code = getattr(exc, "code", None)
    cause = " ".join(str(exc).split()) or type(exc).__name__
    bucket = _bucket(path)
    if isinstance(exc, GoogleAuthError):
        return StorageError(
            f"{path}: no credentials for Cloud Storage bucket '{bucket}' ({cause}); run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        )
    if code in (401, 403) or cause.startswith("Forbidden"):
        return StorageError(
            f"{path}: Cloud Storage refused access to bucket '{bucket}' ({cause}); grant the account "
            "roles/storage.objectUser on the bucket, or check the credentials"
        )
    if isinstance(exc, ValueError) and cause.startswith("Bad Request"):
        return StorageError(f"{path}: Cloud Storage refused the request for bucket '{bucket}' ({cause})")
    if isinstance(exc, OSError | aiohttp.ClientError | TimeoutError | requests.RequestException) or isinstance(
        code, int
    ):
        where = getattr(fs, "_location", None) or "storage.googleapis.com"
        return StorageError(
            f"{path}: cannot reach Cloud Storage for bucket '{bucket}' at {where} ({cause}); check the network "
            "(and STORAGE_EMULATOR_HOST if set), then run again",
            transient=True,
        )
    return None


def open_read(path: str) -> IO[bytes]:
    """Open a file or object for streaming reads."""
    if is_remote(path):
        return _remote(path, lambda fs: fs.open(path, "rb"))
    return open(path, "rb")


def size_of(path: str) -> int:
    """The size in bytes of a file or object."""
    if is_remote(path):
        return int(_remote(path, lambda fs: fs.size(path)))
    return os.path.getsize(path)


def exists(path: str) -> bool:
    """Whether a file or object exists; a path in a bucket that does not exist is a StorageError saying so."""
    if is_remote(path):
        if _remote(path, lambda fs: fs.exists(path)):
            return True
        bucket = _bucket(path)
        if not _remote(path, lambda fs: fs.exists(bucket)):  # say so, rather than "no such file" in it
            raise _no_bucket(path, bucket)
        return False
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    """Whether the path is a directory (on gs://: a prefix with objects under it and no object of its own)."""
    if is_remote(path):
        return bool(_remote(path, lambda fs: fs.isdir(path) and not fs.isfile(path)))
    return os.path.isdir(path)


def join(base: str, *parts: str) -> str:
    """Join path segments for either kind of path."""
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def list_files(directory: str, suffix: str) -> list[str]:
    """Every file under `directory` (recursively) whose name ends with `suffix`, sorted."""
    if is_remote(directory):
        protocol = directory.split("://", 1)[0]

        def find(fs: Any) -> list[str]:
            fs.invalidate_cache(directory)  # other tasks write here too: never trust a cached listing
            return list(fs.find(directory.rstrip("/") + "/"))

        found = _remote(directory, find)
        return sorted(f"{protocol}://{p}" for p in found if p.endswith(suffix))
    root = Path(directory)
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob(f"*{suffix}") if p.is_file())


def read_bytes(path: str) -> bytes:
    """A whole small file (metadata, media)."""
    if is_remote(path):
        return bytes(_remote(path, lambda fs: fs.cat_file(path)))
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
    import pyarrow.parquet as pq  # 40 ms: a run over JSONL first needs it for its first part, after its first request

    if not is_remote(path):
        with pq.ParquetFile(path, **options) as parquet:
            yield parquet
        return
    with open_read(path) as handle, pq.ParquetFile(handle, pre_buffer=False, **options) as parquet:
        yield parquet


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """The chosen columns of one Parquet file; remote objects are read by range, not downloaded whole."""
    if is_remote(path):
        return _remote(path, lambda _fs: _read_whole(path, columns))
    return _read_whole(path, columns)


def _read_whole(path: str, columns: list[str] | None) -> pa.Table:
    """Read the columns through `open_parquet`, with Arrow's threads only for a local file."""
    with open_parquet(path) as parquet:
        return parquet.read(columns=columns, use_threads=not is_remote(path))


def write_once(path: str, data: bytes) -> None:
    """Write a whole file so that readers see either all of it or nothing.

    On an object store: one upload, visible only once finalized. On a plain path (a local disk or a
    Cloud Storage FUSE mount): a temporary sibling, fsynced, then renamed (see the module docstring).
    """
    if is_remote(path):
        _remote(path, lambda fs: fs.pipe_file(path, data))
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
        _remote(path, lambda fs: fs.rm(path) if fs.exists(path) else None)
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
        ) from exc


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
        ) from exc


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
