"""Local paths and gs:// objects behind one interface, against the real Cloud Storage emulator."""

from __future__ import annotations

import base64
import io
import json
import socket
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun import storage
from batchrun.prompts import Renderer, RowInputError
from batchrun.shards import Shard
from batchrun.sink import OutputWriter
from batchrun.sources import Record, Source
from batchrun.spec import InputSpec, load_spec, parse_spec
from tests.conftest import Gcs, base_env, run_cli
from tests.faults import complaints


def parquet_bytes(rows: list[dict[str, object]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def test_gs_objects_are_written_whole_listed_and_read(gcs: Gcs) -> None:
    """write_once puts one object; list_files finds it under the prefix (not elsewhere); reads return it."""
    root = gcs.make_bucket()
    storage.write_once(f"{root}/out/part-a.parquet", parquet_bytes([{"id": "1"}, {"id": "2"}]))
    storage.write_once(f"{root}/out/_batchrun/job.json", b"{}")
    storage.write_once(f"{root}/outside/part-b.parquet", parquet_bytes([{"id": "3"}]))
    assert storage.list_files(f"{root}/out", ".parquet") == [f"{root}/out/part-a.parquet"]
    assert storage.read_parquet(f"{root}/out/part-a.parquet", ["id"]).column("id").to_pylist() == ["1", "2"]
    assert storage.read_bytes(f"{root}/out/_batchrun/job.json") == b"{}"
    assert storage.list_files(f"{root}/nothing-here", ".parquet") == []


def test_listing_sees_objects_written_by_another_client(gcs: Gcs) -> None:
    """Other tasks write into the same prefix: a listing is never served from a stale cache."""
    root = gcs.make_bucket()
    storage.write_once(f"{root}/out/part-1.parquet", parquet_bytes([{"id": "1"}]))
    assert len(storage.list_files(f"{root}/out", ".parquet")) == 1
    gcs.fs().pipe_file(f"{root}/out/part-2.parquet", parquet_bytes([{"id": "2"}]))
    assert len(storage.list_files(f"{root}/out", ".parquet")) == 2


def test_jsonl_and_parquet_inputs_stream_from_gs(gcs: Gcs) -> None:
    """Both input kinds read from gs:// with the same ids, columns and types as local files."""
    root = gcs.make_bucket()
    rows = [{"id": f"r{i}", "text": f"t{i}", "n": i} for i in range(5)]
    storage.write_once(f"{root}/in.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    storage.write_once(f"{root}/in.parquet", parquet_bytes(rows))
    for name in ("in.jsonl", "in.parquet"):
        source = Source(InputSpec(path=f"{root}/{name}", id_column="id"))
        assert [r.id for b in source.batches() for r in b] == [r["id"] for r in rows]
        summary = source.summarize(["n"])
        assert summary.rows == 5 and summary.types["n"] == pa.int64()
        assert summary.identity["size"] == storage.size_of(f"{root}/{name}")


def test_job_spec_can_live_on_gs(gcs: Gcs) -> None:
    """`batchrun run gs://bucket/job.yaml`: the spec itself is read from Cloud Storage."""
    root = gcs.make_bucket()
    text = "name: j\ninput: {path: in.jsonl}\nmodel: m\nendpoint: {kind: simulator}\noutput: {path: out}\n"
    storage.write_once(f"{root}/jobs/j.yaml", text.encode())
    assert load_spec(f"{root}/jobs/j.yaml").name == "j"


def test_gs_media_is_inlined_only_when_the_spec_asks(gcs: Gcs) -> None:
    """media.inline reads a gs:// object and sends its bytes; without it the URI goes to Vertex as is."""
    root = gcs.make_bucket()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    storage.write_once(f"{root}/img/cat.png", png)

    def render(inline: bool, path: str) -> str:
        raw = {
            "name": "j",
            "input": {"path": "x.jsonl"},
            "endpoint": {"kind": "simulator"},
            "model": "m",
            "request": {"prompt": "Describe", "media": [{"column": "img", "inline": inline}]},
            "output": {"path": "o"},
        }
        body = Renderer(parse_spec(raw), "rows").render(Record(line=1, id="r", data={"img": path}))
        part = body["messages"][-1]["content"][1]["image_url"]  # gs:// URIs go in the REST string form
        return str(part if isinstance(part, str) else part["url"])

    assert render(False, f"{root}/img/cat.png") == f"{root}/img/cat.png"
    assert render(True, f"{root}/img/cat.png") == "data:image/png;base64," + base64.b64encode(png).decode()
    with pytest.raises(RowInputError, match=r"cannot read gs://.*/img/missing\.png"):
        render(True, f"{root}/img/missing.png")


def test_crash_leftovers_are_invisible_to_scans_and_cleaned_by_their_own_shard(tmp_path: Path) -> None:
    """A write killed before its rename leaves only `*.tmp`: scans skip it; only the shard that wrote it cleans it."""
    out = tmp_path / "out"
    storage.write_once(str(out / "part-0000of0002-run-00001.parquet"), parquet_bytes([{"id": "a"}]))
    mine = out / "part-0000of0002-run-00002.parquet.1a2b3c4d.tmp"
    theirs = out / "part-0001of0002-run-00001.parquet.5e6f7a8b.tmp"
    for leftover in (mine, theirs):
        leftover.write_bytes(b"PAR1 half a file")
    assert pl.scan_parquet(f"{out}/**/*.parquet").collect().get_column("id").to_list() == ["a"]
    OutputWriter(str(out), Shard(0, 2)).prepare()
    assert not mine.exists() and theirs.exists()


def test_local_write_once_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    """Rewriting a part (as --retry-errors does) swaps the whole file; no temporary file stays behind."""
    path = tmp_path / "out" / "part-x.parquet"
    storage.write_once(str(path), parquet_bytes([{"id": "a"}, {"id": "b"}]))
    storage.write_once(str(path), parquet_bytes([{"id": "a"}]))
    assert pq.read_table(path).column("id").to_pylist() == ["a"]
    assert [p.name for p in path.parent.iterdir()] == ["part-x.parquet"]


def _gs_job(directory: Path, output: str) -> Path:
    """A simulator job with a local input and its output on `output`."""
    (directory / "in.jsonl").write_text('{"id": "a", "text": "x"}\n')
    spec = directory / "job.yaml"
    spec.write_text(
        "name: j\ninput: {path: in.jsonl, id_column: id}\nendpoint: {kind: simulator}\nmodel: m\n"
        f"request: {{prompt: '{{text}}'}}\noutput: {{path: '{output}'}}\n"
    )
    return spec


def _storage_complaints(stderr: str) -> list[str]:
    """What the run said about Cloud Storage (google-auth's own warning about absent local credentials aside)."""
    return [m for m in complaints(stderr) if not m.startswith("google.auth")]


def test_a_missing_bucket_is_one_line_naming_it(gcs: Gcs, tmp_path: Path) -> None:
    """`run` into gs://no-such-bucket: exit 2, one line with the bucket, why, and how to create it."""
    spec = _gs_job(tmp_path, "gs://no-such-bucket-batchrun/out")
    result = run_cli(["run", str(spec)], env={**base_env(), **gcs.env}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (message,) = _storage_complaints(result.stderr)
    assert "bucket 'no-such-bucket-batchrun' does not exist" in message
    assert "gcloud storage buckets create gs://no-such-bucket-batchrun" in message


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_input_in_a_missing_bucket_names_the_bucket(gcs: Gcs, tmp_path: Path, command: str) -> None:
    """input.path in a bucket that does not exist: exit 2, one line saying the bucket is missing, not the file."""
    spec = _gs_job(tmp_path, "out")
    spec.write_text(spec.read_text().replace("path: in.jsonl", "path: gs://no-such-bucket-batchrun/in.jsonl"))
    result = run_cli([command, str(spec)], env={**base_env(), **gcs.env}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (message,) = _storage_complaints(result.stderr)
    assert "gs://no-such-bucket-batchrun/in.jsonl: Cloud Storage bucket 'no-such-bucket-batchrun' does not exist" in (
        message
    )


@pytest.mark.slow
def test_unreachable_storage_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """Cloud Storage that does not answer: after gcsfs's own retries (about 35 s), exit 3 and one line, no traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    spec = _gs_job(tmp_path, "gs://some-bucket/out")
    env = {
        **base_env(),
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    result = run_cli(["run", str(spec)], env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    (message,) = _storage_complaints(result.stderr)
    assert "cannot reach Cloud Storage for bucket 'some-bucket'" in message
    assert f"127.0.0.1:{port}" in message and "Traceback" not in message
