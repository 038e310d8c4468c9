"""How the process ends: every exit code tells the truth, a finished run never aborts at exit, a closed pipe is quiet.

The abort ("terminate called without an active exception", exit -6) came from Arrow's own threads
dropping Python file objects that `pq.read_table` had been handed, after it returned: a thread that
takes the GIL while the interpreter finalizes is ended by CPython inside a C++ destructor, and the
process aborts. It needs a race, so it is shown by many real runs, each reading many part files
(its own at the end, and `status` after it) just before it exits.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import RequestError
from batchrun.prepare import prepare
from batchrun.runner import Runner, RunOptions
from batchrun.schema import ResultRow
from batchrun.spec import load_spec
from tests.conftest import Job
from tests.faults import numbered_rows


def _many_parts_job(make_job: Any) -> Job:
    """A job whose output is 40 part files, so the check before exit reads 40 files on Arrow's threads."""
    job: Job = make_job(numbered_rows(40), output={"path": "out", "keep_columns": ["text"], "flush_rows": 1})
    return job


def _runs(job: Job, times: int, side_by_side: int) -> list[tuple[int, str]]:
    """`run` then `status` on a fresh output, `times` over, `side_by_side` at once so the CPU is contended."""

    def once(index: int) -> tuple[int, str]:
        out = job.dir / f"out-{index}"
        run = subprocess.run(
            [sys.executable, "-m", "batchrun", "run", str(job.spec), "--set", f"output.path={out}"],
            env=job.env,
            cwd=job.dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        status = subprocess.run(
            [sys.executable, "-m", "batchrun", "status", str(job.spec), "--set", f"output.path={out}"],
            env=job.env,
            cwd=job.dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return (run.returncode, run.stderr) if run.returncode else (status.returncode, status.stderr)

    with ThreadPoolExecutor(max_workers=side_by_side) as pool:
        return list(pool.map(once, range(times)))


def test_finished_runs_exit_0_every_time(make_job: Any) -> None:
    """Two finished runs side by side (and `status` after each): every one exits 0 and nothing aborts at exit."""
    results = _runs(_many_parts_job(make_job), times=2, side_by_side=2)
    assert [code for code, _ in results] == [0] * 2, [err for code, err in results if code][:1]
    assert not any("terminate called" in err for _, err in results)


@pytest.mark.slow
def test_finished_runs_exit_0_under_stress(make_job: Any) -> None:
    """120 finished runs and statuses, four at a time on a contended CPU: every exit code is 0, none aborts."""
    results = _runs(_many_parts_job(make_job), times=120, side_by_side=4)
    codes = [code for code, _ in results]
    assert codes == [0] * len(codes), {code: codes.count(code) for code in set(codes)}
    assert not any("terminate called" in err for _, err in results)


def test_validate_into_a_closed_pipe_exits_quietly(make_job: Any) -> None:
    """`batchrun validate job.yaml | head -1` with the reader gone before the first byte: exit 0, no traceback."""
    job = make_job()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: the first write gets EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "batchrun", "validate", str(job.spec)],
            env=job.env,
            cwd=job.dir,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


def test_validate_piped_into_head_prints_one_line(make_job: Any) -> None:
    """The shell form: `validate | head -1` prints the first line and nothing on stderr, whatever the timing."""
    job = make_job()
    command = f"{sys.executable} -m batchrun validate {job.spec} | head -1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=job.env, cwd=job.dir, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{job.spec}: valid\n"
    assert result.stderr == ""


class _BrokenWriter:
    """A writer with a bug: it raises what no disk error raises."""

    def add(self, row: dict[str, Any]) -> None:
        raise TypeError("a bug in the writer")


def test_a_bug_behind_the_writer_is_raised_not_turned_into_a_stop(make_job: Any, monkeypatch: Any) -> None:
    """An exception from the writer that is not a disk error propagates as the bug it is (exit 1), not a stop (3)."""
    job = make_job(n=3)
    monkeypatch.chdir(job.dir)
    for key, value in job.env.items():
        monkeypatch.setenv(key, value)
    runner = Runner(prepare(load_spec(job.spec)), RunOptions())
    record = next(iter(runner.prepared.source.batches()))[0]
    row = {"id": record.id, "status": "ok"}
    with pytest.raises(TypeError, match="a bug in the writer"):
        runner._finish(_BrokenWriter(), row, record=record)  # type: ignore[arg-type]
    assert runner._stop_reason is None


def test_a_bug_in_a_worker_ends_the_run_with_exit_1(make_job: Any, monkeypatch: Any) -> None:
    """A worker that dies of a bug while the producer still has rows: the run ends with that bug, it never hangs."""
    job = make_job(n=200, limits__concurrency=2)
    monkeypatch.chdir(job.dir)
    for key, value in job.env.items():
        monkeypatch.setenv(key, value)

    class Buggy(Runner):
        """Every send has a bug."""

        async def _send(
            self, client: Any, record: Any, body: dict[str, Any], sent: Any
        ) -> tuple[ResultRow, RequestError | None]:
            raise KeyError("a bug in a worker")

    runner = Buggy(prepare(load_spec(job.spec)), RunOptions())
    with pytest.raises(KeyError, match="a bug in a worker"):
        asyncio.run(asyncio.wait_for(runner.run(), timeout=60))


def test_cli_reports_a_bug_as_exit_1(tmp_path: Path, capsys: Any) -> None:
    """The one exit-code point: an unexpected exception prints "internal error (a bug)" and exits 1, never 3."""
    from batchrun import cli

    def boom(args: Any, spec: Any) -> int:
        raise RuntimeError("unexpected")

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: t\ninput: {path: in.jsonl}\nmodel: m\nendpoint: {kind: simulator}\n"
        "request: {prompt: '{text}'}\noutput: {path: out}\n"
    )
    original = cli._COMMANDS["validate"]
    cli._COMMANDS["validate"] = boom
    try:
        assert cli.main(["validate", str(spec)]) == 1
    finally:
        cli._COMMANDS["validate"] = original
    assert "internal error (a bug)" in capsys.readouterr().err
