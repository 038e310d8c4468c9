"""Local paths and gs:// URIs behind one small interface, so sources and sink never branch on scheme."""

from __future__ import annotations

import contextlib
import os
import posixpath
from pathlib import Path
from typing import IO, Any

from batchrun.errors import OutputError


def is_remote(path: str) -> bool:
    """True for object-store URIs (gs://), which have no rename and no partial files."""
    return "://" in path and not path.startswith("file://")


def _filesystem(path: str) -> Any:
    """The fsspec filesystem for a remote URI; gcsfs is only imported when a gs:// path is used."""
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
        if not fs.exists(directory):
            return []
        found = fs.find(directory)
        return sorted(f"{protocol}://{p}" for p in found if p.endswith(suffix))
    root = Path(directory)
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob(f"*{suffix}") if p.is_file())


def read_bytes(path: str) -> bytes:
    """A whole small file (metadata, media)."""
    with open_read(path) as handle:
        return handle.read()


def write_once(path: str, data: bytes) -> None:
    """Write a whole file so that readers see either all of it or nothing.

    Locally: write a temporary sibling, fsync, then rename over the target. On an object store a
    single PUT is already all-or-nothing, so the object is written directly.
    """
    if is_remote(path):
        fs = _filesystem(path)
        with fs.open(path, "wb") as handle:
            handle.write(data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
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
        raise OutputError(f"{path}: cannot create the output directory ({exc.strerror})") from None


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
