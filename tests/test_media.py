"""Media columns -> content parts: MIME types from a fixed table or the bytes, the seeds' shapes, row errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from batchrun.commands.export_media import extension, file_name
from batchrun.errors import RowInputError
from batchrun.media import media_part, mime_from_name, sniff


def test_mime_types_do_not_depend_on_the_host() -> None:
    """Gemini's names for common types, whatever /etc/mime.types says (it maps .wav to audio/x-wav)."""
    assert mime_from_name("a.wav", "audio") == "audio/wav"
    assert mime_from_name("gs://b/pixel.MP3", "audio") == "audio/mp3"
    assert mime_from_name("clip.mov", "video") == "video/quicktime"
    assert mime_from_name("https://x.com/a.webm?sig=1", "video") == "video/webm"
    assert mime_from_name("a.webm", "audio") == "audio/webm"
    assert mime_from_name("doc.pdf", "file") == "application/pdf"
    assert mime_from_name("photo", "image") is None


def test_sniffing_names_files_without_an_extension() -> None:
    """The first bytes give the type of common formats; unknown bytes give none."""
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio/wav"
    assert sniff(b"\x00\x00\x00\x18ftypmp42") == "video/mp4"
    assert sniff(b"%PDF-1.4") == "application/pdf"
    assert sniff(b"hello") is None


def test_local_files_are_inlined_by_type(tmp_path: Path) -> None:
    """image/video/file become image_url data: URIs; audio becomes input_audio with bare base64 and a short format."""
    blob = tmp_path / "blob"  # no extension: the PNG signature decides
    blob.write_bytes(b"\x89PNG\r\n\x1a\nrest")
    encoded = base64.b64encode(blob.read_bytes()).decode()
    assert media_part("p", "image", str(blob), openai_style=False) == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{encoded}"},
    }
    clip = tmp_path / "a.mp3"
    clip.write_bytes(b"ID3...")
    assert media_part("c", "audio", str(clip), openai_style=False) == {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"ID3...").decode(), "format": "mp3"},
    }
    flac = tmp_path / "a.flac"
    flac.write_bytes(b"fLaC")
    assert media_part("c", "audio", str(flac), openai_style=False)["input_audio"]["format"] == "audio/flac"


def test_uris_use_the_seeds_forms() -> None:
    """gs:// images as the REST string form; https:// as {url}; audio URIs with their MIME type as format."""
    assert media_part("p", "image", "gs://b/scones.jpg", openai_style=False) == {
        "type": "image_url",
        "image_url": "gs://b/scones.jpg",
    }
    assert media_part("v", "video", "https://x.com/v.mp4", openai_style=False) == {
        "type": "image_url",
        "image_url": {"url": "https://x.com/v.mp4"},
    }
    assert media_part("c", "audio", "gs://b/pixel.mp3", openai_style=False) == {
        "type": "input_audio",
        "input_audio": {"format": "audio/mp3", "data": "gs://b/pixel.mp3"},
    }
    data_uri = "data:audio/wav;base64,UklGRg=="
    assert media_part("c", "audio", data_uri, openai_style=False)["input_audio"] == {
        "data": "UklGRg==",
        "format": "wav",
    }


def test_files_are_image_url_on_vertex_and_file_parts_on_openai(tmp_path: Path) -> None:
    """Vertex documents text and image_url user parts; OpenAI-compatible servers get OpenAI's file part."""
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 x")
    uri = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 x").decode()
    assert media_part("d", "file", str(pdf), openai_style=False) == {"type": "image_url", "image_url": {"url": uri}}
    assert media_part("d", "file", str(pdf), openai_style=True) == {
        "type": "file",
        "file": {"file_data": uri, "filename": "report.pdf"},
    }


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("image", "missing/cat.png", "media column 'm': cannot read missing/cat.png"),
        ("video", "clip.png", "media column 'm' is declared type video, but clip.png is image/png"),
        ("image", "notes", "cannot tell the media type of notes; give the file an extension such as .png"),
        ("audio", "https://x.com/stream", "cannot tell the audio format of https://x.com/stream"),
    ],
)
def test_bad_values_are_row_errors_naming_the_value(
    kind: str, value: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unreadable, mismatched or untyped media fail only their row, saying what to fix."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "notes").write_bytes(b"plain words")
    with pytest.raises(RowInputError, match=message):
        media_part("m", kind, value, openai_style=False)


def test_exported_file_names_are_safe_and_distinct() -> None:
    """Ids are percent-encoded (no separators, no hidden files); the extension follows the MIME type."""
    assert file_name("cat", "image/png") == "cat.png"
    assert file_name("a/b c", "image/jpeg") == "a%2Fb%20c.jpg"
    assert file_name("..", "audio/wav") == "%2E..wav"
    assert extension("audio/L16;codec=pcm;rate=24000") == ".pcm"
    assert extension(None) == ".bin"
