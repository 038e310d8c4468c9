"""The docs stay true: the output schema DuckDB reads is the one docs/analysts.md lists, its queries run,
the Cloud Run page's spec validates, and the Dockerfile has the shape the page promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchrun.spec import parse_spec
from tests.conftest import REPO, Job, Sim, duckdb_rows

ANALYSTS = (REPO / "docs" / "analysts.md").read_text()
CLOUD_RUN = (REPO / "docs" / "cloud-run.md").read_text()


def blocks(markdown: str, language: str) -> list[str]:
    """The fenced code blocks of one language."""
    return re.findall(rf"```{language}\n(.*?)```", markdown, re.S)


def documented_schema() -> dict[str, str]:
    """column -> DuckDB type, from the schema table of docs/analysts.md."""
    rows = re.findall(r"^\| `([a-z_]+)` \| ([A-Z ]+?) \| [A-Z0-9]+ \|", ANALYSTS, re.M)
    return dict(rows)


def test_duckdb_reads_the_documented_schema_and_runs_the_documented_queries(make_job: Any, sim: Sim) -> None:
    """A real run's output, read by DuckDB: the columns and types of the docs' table, then the kept columns;
    every SQL example of the page runs on it; the joined export reads back with the input's columns."""
    sim.configure(max_body_bytes=4000)  # two rows too big for the endpoint: error rows with HTTP 400
    rows = [{"id": f"row-{i:05d}", "text": f"review number {i}" + ("!" * 5000 if i < 2 else "")} for i in range(30)]
    job: Job = make_job(rows=rows)
    result = job.run("run")
    assert result.returncode == 0, result.stderr[-2000:]
    pattern = f"{job.output}/*.parquet"
    described = duckdb_rows(f"DESCRIBE SELECT * FROM read_parquet('{pattern}')")
    columns = {row[0]: row[1] for row in described}
    schema = documented_schema()
    assert len(schema) >= 20
    assert list(columns) == [*schema, "text"]
    assert {name: columns[name] for name in schema} == schema

    queries = [q.strip() for block in blocks(ANALYSTS, "sql") for q in block.split(";") if q.strip()]
    local = [q for q in queries if "out/reviews-sentiment" in q]
    assert len(local) == 4
    for query in local:
        found = duckdb_rows(query.replace("out/reviews-sentiment/*.parquet", pattern))
        assert found, query
    (cost_block,) = [b for b in blocks(ANALYSTS, "python") if b.startswith("# cost by traffic type")]
    namespace: dict[str, Any] = {}
    exec(cost_block.replace("out/reviews-sentiment/*.parquet", pattern).replace("print(cost)", ""), namespace)
    by_type = dict(namespace["cost"].select("traffic_type", "cost").iter_rows())
    cost_sql = next(q for q in local if q.startswith("-- cost by traffic type"))
    by_sql = {r[0]: r[3] for r in duckdb_rows(cost_sql.replace("out/reviews-sentiment/*.parquet", pattern))}
    assert by_sql["ON_DEMAND"] == pytest.approx(by_type["ON_DEMAND"]) and by_type["ON_DEMAND"] > 0
    (tokens,) = duckdb_rows(f"SELECT sum(total_tokens), count(DISTINCT id), count(*) FROM read_parquet('{pattern}')")
    assert tokens[0] > 0 and tokens[1] == tokens[2] == 30

    export = job.run("export", str(job.dir / "all.parquet"), "--join-input")
    assert export.returncode == 0, export.stderr
    (row,) = duckdb_rows(f"SELECT count(*), count(DISTINCT id), min(text) FROM '{job.dir / 'all.parquet'}'")
    assert row[:2] == (30, 30) and row[2].startswith("review number")


def test_the_cloud_run_spec_validates_and_the_commands_have_every_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's job spec is a valid spec, and its gcloud commands carry what a Cloud Run job needs."""
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    (spec_text,) = [b for b in blocks(CLOUD_RUN, "yaml") if b.lstrip().startswith("# gs://")]
    spec = parse_spec(yaml.safe_load(spec_text))
    assert spec.input.path.startswith("gs://") and spec.output.path.startswith("gs://")
    commands = "\n".join(blocks(CLOUD_RUN, "bash"))
    for flag in (
        "gcloud run jobs create",
        "--tasks=",
        "--task-timeout=",
        "--max-retries=",
        "--service-account=",
        "--add-volume=name=data,type=cloud-storage",
        "--add-volume-mount=volume=data,mount-path=",
        "gcloud run jobs execute",
        "docker build",
    ):
        assert flag in commands, flag


def test_readme_links_the_guides() -> None:
    """A user finds the Cloud Run and analyst guides from the README."""
    readme = (REPO / "README.md").read_text()
    assert "docs/cloud-run.md" in readme and "docs/analysts.md" in readme
    assert Path(REPO / "Dockerfile").exists()


def test_reliability_page_covers_every_fault_test() -> None:
    """docs/reliability.md names every test of the fault suite, so a new fault case comes with its figures."""
    page = (REPO / "docs" / "reliability.md").read_text()
    assert "docs/reliability.md" in (REPO / "README.md").read_text()
    for module in sorted((REPO / "tests").glob("test_fault_*.py")):
        for name in re.findall(r"^def (test_\w+)", module.read_text(), re.M):
            assert name in page, f"{module.name}::{name} is not in docs/reliability.md"
