"""`batchrun export-media`: generated images and audio from the output's `media` column, as files named by id.

A file is `<id><extension>`, the id percent-encoded so that any id is one safe, distinct file name
(`a/b` -> `a%2Fb.png`) and the extension comes from `media_mime_type`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from batchrun import storage
from batchrun.errors import OutputError
from batchrun.ids import SavedIds
from batchrun.media import builtin_types
from batchrun.saved import SavedOutput
from batchrun.sources import Source
from batchrun.spec import JobSpec

EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mp3": ".mp3",
    "audio/mpeg": ".mp3",
    "audio/l16": ".pcm",  # Gemini's raw speech: audio/L16;codec=pcm;rate=24000
}


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    files: int
    bytes: int


def file_name(rid: str, mime: str | None) -> str:
    """A distinct, safe file name for a row's media."""
    stem = quote(rid, safe="-_.")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]  # no hidden files, no "." or ".."
    return stem + extension(mime)


def extension(mime: str | None) -> str:
    """The file extension for a MIME type (parameters such as `;rate=24000` ignored)."""
    base = (mime or "").split(";", 1)[0].strip().lower()
    return EXTENSIONS.get(base) or builtin_types().guess_extension(base) or ".bin"


def export_media(spec: JobSpec, directory: str) -> Exported:
    """Write every live saved row's media into `directory`; rows without media are skipped."""
    output = SavedOutput(spec.output.path)
    if not output.parts():
        raise OutputError(f"{output.path} holds no results yet: run the job first (batchrun run)")
    storage.makedirs(directory)
    current = SavedIds(Source(spec.input).ids())
    files = size = 0
    for row in output.scan(["id", "media", "media_mime_type"]):
        media = row["media"]
        if not media or not current.contains([row["id"]])[0]:  # no media, or a row whose id left the input
            continue
        target = storage.join(directory, file_name(row["id"], row["media_mime_type"]))
        try:
            storage.write_once(target, media)
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from exc
        files += 1
        size += len(media)
    return Exported(files=files, bytes=size)
