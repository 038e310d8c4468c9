"""Media columns -> content parts: local files inlined as data: URIs with their MIME type, URIs sent as URIs.

The part shapes follow Google's examples for the endpoint (seeds/):

    image, video   {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}   local file, https://
                   {"type": "image_url", "image_url": "gs://bucket/cat.jpg"}                 gs://, Vertex's REST form
                   {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}}        gs:// on kind: openai
    audio          {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}         local file
                   {"type": "input_audio", "input_audio": {"data": "gs://b/a.mp3", "format": "audio/mp3"}}  URIs
    file (PDF...)  image_url as above on Vertex, whose user messages take text and image_url parts of any
                   media type; OpenAI's {"type": "file", "file": {"file_data", "filename"}} on kind: openai

MIME types come from a fixed table of the types Gemini reads (not the host's /etc/mime.types, so a job
renders the same everywhere), then from the file's first bytes.
"""

from __future__ import annotations

import base64
import functools
import mimetypes
import posixpath
from typing import Any

from batchrun import storage
from batchrun.errors import RowInputError

URI_SCHEMES = ("gs://", "https://", "http://")


@functools.cache
def builtin_types() -> mimetypes.MimeTypes:
    """Python's own table of media types only, the same answer on every host (built on first use: 5 ms that
    a run without media never spends)."""
    return mimetypes.MimeTypes()


MIME_BY_SUFFIX: dict[str, dict[str, str]] = {
    "image": {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".webp": "image/webp",
        ".gif": "image/gif",
        ".heic": "image/heic",
        ".heif": "image/heif",
    },
    "audio": {
        ".wav": "audio/wav",
        ".mp3": "audio/mp3",
        ".aac": "audio/aac",
        ".flac": "audio/flac",
        ".ogg": "audio/ogg",
        ".opus": "audio/opus",
        ".m4a": "audio/m4a",
        ".aiff": "audio/aiff",
        ".webm": "audio/webm",
    },
    "video": {
        ".mp4": "video/mp4",
        ".mov": "video/quicktime",
        ".mpeg": "video/mpeg",
        ".mpg": "video/mpg",
        ".webm": "video/webm",
        ".wmv": "video/wmv",
        ".flv": "video/x-flv",
        ".3gp": "video/3gpp",
        ".avi": "video/x-msvideo",
    },
    "file": {
        ".pdf": "application/pdf",
        ".txt": "text/plain",
        ".csv": "text/csv",
        ".html": "text/html",
        ".md": "text/markdown",
        ".json": "application/json",
    },
}
MAGIC: tuple[tuple[int, bytes, str], ...] = (  # (offset, bytes, MIME) for files whose name says nothing
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF8", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (8, b"WAVE", "audio/wav"),
    (0, b"ID3", "audio/mp3"),
    (0, b"fLaC", "audio/flac"),
    (0, b"OggS", "audio/ogg"),
    (4, b"ftyp", "video/mp4"),
    (0, b"%PDF-", "application/pdf"),
)
SHORT_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mp3": "mp3", "audio/mpeg": "mp3"}


def media_part(column: str, kind: str, value: str, *, openai_style: bool, inline_gs: bool = False) -> dict[str, Any]:
    """The content part for one media value of a column declared `kind` (image, audio, video or file).

    With `inline_gs` (`request.media[].inline`), gs:// objects are read here and sent as bytes too, for
    servers that cannot read Cloud Storage.
    """
    mime: str | None
    if value.startswith("data:"):
        uri, mime = value, value[5:].split(";", 1)[0].split(",", 1)[0]
    elif value.startswith(URI_SCHEMES) and not (inline_gs and value.startswith("gs://")):
        uri, mime = value, mime_from_name(value, kind)
    else:
        uri, mime = _inline(column, kind, value)
    if mime and kind in ("image", "audio", "video") and not mime.startswith(f"{kind}/"):
        raise RowInputError(
            f"media column '{column}' is declared type {kind}, but {_short(value)} is {mime}; "
            "fix request.media[].type or the value"
        )
    if kind == "audio":
        return _audio_part(column, uri, mime)
    if kind == "file" and openai_style:
        return {"type": "file", "file": {"file_data": uri, "filename": posixpath.basename(value.split("?")[0])}}
    if uri.startswith("gs://") and not openai_style:  # Vertex's REST form; OpenAI-style servers take {"url": ...}
        return {"type": "image_url", "image_url": uri}
    return {"type": "image_url", "image_url": {"url": uri}}


def mime_from_name(name: str, kind: str) -> str | None:
    """The MIME type a file name or URI's extension gives, preferring the column's declared kind."""
    suffix = posixpath.splitext(name.split("?", 1)[0])[1].lower()
    for table in (MIME_BY_SUFFIX.get(kind, {}), *MIME_BY_SUFFIX.values()):
        if suffix in table:
            return table[suffix]
    return builtin_types().guess_type(f"x{suffix}")[0] if suffix else None


def sniff(data: bytes) -> str | None:
    """The MIME type from a file's first bytes, for names without a known extension."""
    return next((mime for offset, magic, mime in MAGIC if data[offset : offset + len(magic)] == magic), None)


def _inline(column: str, kind: str, path: str) -> tuple[str, str]:
    """A local file as a base64 data: URI, with its MIME type."""
    try:
        raw = storage.read_bytes(path)
    except OSError as exc:
        raise RowInputError(
            f"media column '{column}': cannot read {path} ({exc.strerror or exc}); "
            "fix the path (relative paths resolve from the working directory)"
        ) from exc
    mime = mime_from_name(path, kind) or sniff(raw)
    if mime is None:
        raise RowInputError(
            f"media column '{column}': cannot tell the media type of {path}; give the file an extension "
            f"such as {', '.join(list(MIME_BY_SUFFIX.get(kind, MIME_BY_SUFFIX['file']))[:3])}"
        )
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}", mime


def _audio_part(column: str, uri: str, mime: str | None) -> dict[str, Any]:
    """input_audio: inline data as bare base64 with a short format, URIs as they are with their MIME type."""
    if uri.startswith("data:"):
        data = uri.split(",", 1)[1] if "," in uri else ""
        audio_format = SHORT_AUDIO_FORMATS.get(mime or "", mime or "wav")
        return {"type": "input_audio", "input_audio": {"data": data, "format": audio_format}}
    if mime is None:
        raise RowInputError(
            f"media column '{column}': cannot tell the audio format of {uri}; "
            "use a URI ending in .wav, .mp3, .flac, ... or a data: URI"
        )
    return {"type": "input_audio", "input_audio": {"format": mime, "data": uri}}


def _short(value: str) -> str:
    """A value cut down for an error message (a data: URI can be megabytes)."""
    return value if len(value) <= 120 else value[:80] + "..."
