"""What a user sees: the live display on a terminal's stderr (a pseudo-terminal), JSON lines on a pipe, stdout clean."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from typing import Any

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_on_a_terminal(job: Any, *args: str) -> tuple[int, str, str]:
    """`batchrun run` with stderr on an 80x24 pseudo-terminal and stdout on a pipe; (exit code, screen, stdout)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in job.env.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    process = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job.spec), *args],
        env=env,
        cwd=job.dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    screen = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError as exc:  # EIO: the child closed its end of the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        screen.extend(chunk)
    os.close(leader)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    return process.wait(timeout=60), screen.decode("utf-8", "replace"), stdout


def _visible_lines(screen: str) -> list[str]:
    """The screen's text lines with colours and cursor moves removed."""
    return [line for line in _ESCAPES.sub("", screen).replace("\r\n", "\n").replace("\r", "\n").split("\n") if line]


def test_live_display_is_drawn_on_the_terminal_stderr_within_80_columns(sim: Any, make_job: Any) -> None:
    """On a terminal: frames with elapsed time on stderr, no line over 80 columns, a closing summary; stdout empty."""
    sim.configure(latency_s=0.05)
    job = make_job(
        n=30,
        name="a-rather-long-job-name-for-an-eighty-column-screen",
        limits={"concurrency": 2},
        report={"prices": {"ON_DEMAND": {"input": 0.3, "output": 2.5}}},
    )
    code, screen, stdout = _run_on_a_terminal(job)
    assert code == 0, screen
    assert stdout == ""
    lines = _visible_lines(screen)
    assert any(line.startswith("elapsed ") and " eta " in line and "req/min" in line for line in lines), lines
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert any(re.search(r"finished after \d+:\d\d, 30/30 rows done", line) for line in lines), lines
    summary = next(line for line in lines if line.startswith("this run:"))
    assert re.search(r"30 ok, 0 error, [\d,]+ tokens, [\d.,]+ rows/s, \d+\.\d{4} USD", summary), summary
    assert "output: out" in lines


def test_with_limit_the_screen_says_what_the_eta_covers_and_that_rows_remain(sim: Any, make_job: Any) -> None:
    """--limit: the live display says the ETA is for this run's rows, and the summary how many rows remain."""
    sim.configure(latency_s=0.05)
    job = make_job(n=30, limits={"concurrency": 2})
    code, screen, stdout = _run_on_a_terminal(job, "--limit", "12")
    assert code == 0, screen
    assert stdout == ""
    lines = _visible_lines(screen)
    assert any("--limit 12: the eta covers this run's rows; " in line for line in lines), lines
    assert "--limit 12: 18 rows remain; run again without --limit to finish" in lines, lines


def test_on_a_pipe_stderr_has_json_lines_with_the_summary_and_stdout_nothing(make_job: Any) -> None:
    """Off a terminal: every stderr line is JSON, the last one carries the summary figures; stdout stays empty."""
    job = make_job(n=10, report={"prices": {"ON_DEMAND": {"input": 0.3, "output": 2.5}}})
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    events = [json.loads(line) for line in result.stderr.splitlines()]
    last = events[-1]
    assert last["message"].startswith("test-job: finished after ")
    assert last["ok"] == 10 and last["output"] == "out" and last["tokens"] > 0
    assert last["cost"] > 0 and last["currency"] == "USD" and last["rows_per_s"] > 0
