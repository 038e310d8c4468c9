"""Every sample job in jobs/ runs from the repository root against the built-in simulator, exit 0, with its
feature's columns filled; the committed sample media are what sample_data/generate_media.py makes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest

from batchrun.spec import load_spec
from tests.conftest import REPO, base_env, read_output, run_cli

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def texts(table: pl.DataFrame, column: str = "content") -> list[Any]:
    """A column's values, all present (str, int or bytes, as the column holds)."""
    values = table[column].to_list()
    assert None not in values, column
    return values


def sentiment(table: pl.DataFrame) -> None:
    assert set(texts(table)) <= {"positive", "negative", "neutral"}


def structured(table: pl.DataFrame) -> None:
    schema = json.loads((REPO / "jobs" / "schemas" / "calendar-event.json").read_text())
    for parsed in texts(table, "parsed"):
        jsonschema.validate(json.loads(parsed), schema)


def tool_calls(table: pl.DataFrame) -> None:
    rows = {r["id"]: r for r in table.iter_rows(named=True)}
    for rid, places in (("chicago", ["Chicago"]), ("boston-delhi", ["Boston", "New Delhi"])):
        calls = json.loads(rows[rid]["tool_calls"])
        assert [json.loads(c["arguments"])["location"] for c in calls] == places
        assert calls[0]["extra_content"]["google"]["thought_signature"]
    assert "dress.jpg (image/jpg" in rows["green-shirt"]["content"]


def images_described(table: pl.DataFrame) -> None:
    assert all("I received 1 image (image/" in t for t in texts(table))


def audio_transcribed(table: pl.DataFrame) -> None:
    assert all("I received 1 audio clip (audio/" in t for t in texts(table))


def documents_read(table: pl.DataFrame) -> None:
    assert all("1 file (application/pdf, 714 bytes)" in t for t in texts(table))


def thoughts_kept(table: pl.DataFrame) -> None:
    assert all(r.startswith("Thinking about: ") for r in texts(table, "reasoning"))
    assert all("<think>" not in t for t in texts(table))
    assert all(n > 0 for n in texts(table, "reasoning_tokens"))


def images_generated(table: pl.DataFrame) -> None:
    assert all(m.startswith(b"\x89PNG") for m in texts(table, "media"))
    assert set(texts(table, "media_mime_type")) == {"image/png"}


def streamed(table: pl.DataFrame) -> None:
    assert all(t > 0 for t in texts(table, "ttft_ms"))
    assert all(t.startswith("Simulated answer to: Write a story") for t in texts(table))


def self_deployed(table: pl.DataFrame) -> None:
    assert set(texts(table, "model")) == {"1234567890123456789"}


def batch_answered(table: pl.DataFrame) -> None:
    assert table["id"].to_list() == ["request-1", "request-2", "request-3"]
    assert set(texts(table, "model")) == {"google/gemini-2.5-flash"}


def flex_labeled(table: pl.DataFrame) -> None:
    assert set(texts(table, "traffic_type")) == {"ON_DEMAND_FLEX"}
    assert table["cached_tokens"].null_count() == 1
    least = table["cached_tokens"].min()
    assert isinstance(least, int) and least > 1000  # all but the first


CHECKS: dict[str, Callable[[pl.DataFrame], None]] = {
    "reviews-sentiment": sentiment,
    "structured-extraction": structured,
    "tool-calling": tool_calls,
    "image-understanding": images_described,
    "audio-transcription": audio_transcribed,
    "document-questions": documents_read,
    "thinking": thoughts_kept,
    "image-generation": images_generated,
    "streaming": streamed,
    "self-deployed-endpoint": self_deployed,
    "openai-batch": batch_answered,
    "flex-labeling": flex_labeled,
}


def test_every_job_has_a_check_and_a_readme_line() -> None:
    """A new sample job must say what it shows (a check here) and how to run it (README)."""
    readme = (REPO / "README.md").read_text()
    assert sorted(CHECKS) == [job.stem for job in JOBS]
    for job in JOBS:
        assert f".venv/bin/batchrun run jobs/{job.name}" in readme, job.name


@pytest.mark.parametrize("job", JOBS, ids=[job.stem for job in JOBS])
def test_sample_job_runs_from_the_repository_root(job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`batchrun run jobs/<name>.yaml` from the repository root: exit 0, one ok row per input row, the
    feature's columns filled."""
    output = tmp_path / job.stem
    result = run_cli(["run", f"jobs/{job.name}", "--set", f"output.path={output}"], env=base_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    table = read_output(output).sort("id")
    monkeypatch.chdir(REPO)
    spec = load_spec(job)
    lines = [line for line in Path(spec.input.path).read_text().splitlines() if line.strip()]
    assert table.height == len(lines) and table["id"].n_unique() == len(lines)
    assert set(table["status"]) == {"ok"}, table.filter(pl.col("status") != "ok")["error_message"].to_list()
    assert table["total_tokens"].null_count() == 0
    CHECKS[job.stem](table)
    if job.stem == "image-generation":
        exported = run_cli(
            ["export-media", f"jobs/{job.name}", str(tmp_path / "images"), "--set", f"output.path={output}"],
            env=base_env(),
            cwd=REPO,
        )
        assert exported.returncode == 0, exported.stderr
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["cat.png", "lighthouse.png", "teapot.png"]


def test_sample_media_are_regenerated_byte_for_byte(tmp_path: Path) -> None:
    """The committed PNG, WAV and PDF files are exactly what the generator writes."""
    subprocess.run(
        [sys.executable, str(REPO / "sample_data" / "generate_media.py"), str(tmp_path)],
        env=base_env(),
        check=True,
        capture_output=True,
    )
    committed = REPO / "sample_data" / "media"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in committed.iterdir())
    for made in tmp_path.iterdir():
        assert made.read_bytes() == (committed / made.name).read_bytes(), made.name


def test_validate_shows_inline_media_cut_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batchrun validate` prints the first request with inline audio cut to a readable length; nothing is sent."""
    from batchrun.cli import main

    monkeypatch.chdir(REPO)
    assert main(["validate", "jobs/audio-transcription.yaml"]) == 0
    shown = capsys.readouterr().out
    assert "3 rows" in shown and '"format": "wav"' in shown
    assert "...[2192 chars]" in shown and max(len(line) for line in shown.splitlines()) < 150
