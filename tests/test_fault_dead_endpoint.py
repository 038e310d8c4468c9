"""A dead or refusing endpoint is not a finished job: the run stops within a few attempts, exit 3, and saves no row.

Over real sockets: a port nothing listens on, a host name that cannot resolve (`.invalid`), https://
to the plain-HTTP simulator, and a key the simulator refuses. Each stop names the host, the port and
the cause; the rows tried stay unsaved, so the run after the fix sends them.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from batchrun.errors import FinalError, RetryableError
from batchrun.health import EndpointHealth, host_and_port, unreachable_cause
from batchrun.schema import ResultRow
from tests.conftest import Sim, base_env, read_output, run_cli, write_rows
from tests.faults import complaints

KEY = "sk-test-abcdefghijklmnopqrstuvwxyz"


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _job(tmp_path: Path, base_url: str, *, rows: int = 20, transport: str = "direct") -> dict[str, str]:
    """A kind: openai job on `base_url`; returns the CLI environment."""
    write_rows(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"hello {i}"} for i in range(rows)])
    spec = {
        "name": "dead",
        "input": {"path": "in.jsonl", "id_column": "id"},
        "endpoint": {"kind": "openai", "base_url": base_url, "api_key_env": "MY_KEY", "transport": transport},
        "model": "gemini-2.5-flash",
        "request": {"prompt": "{text}"},
        "limits": {"concurrency": 4},
        "retry": {"max_attempts": 8, "timeout_s": 10},
        "output": {"path": "out", "flush_rows": 5, "flush_seconds": 0.2},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = base_env()
    env["MY_KEY"] = KEY
    return env


def _stop_message(stderr: str) -> str:
    """The one message the run stopped with."""
    found = complaints(stderr)
    assert found, stderr
    return found[-1]


@pytest.mark.parametrize("transport", ["direct", "openai"])
def test_nothing_listening_stops_the_run_and_the_rerun_sends_every_row(
    tmp_path: Path, sim: Sim, transport: str
) -> None:
    """Connection refused on every attempt: exit 3 naming host, port and cause, no row saved; fixed, all ok."""
    port = _free_port()
    env = _job(tmp_path, f"http://127.0.0.1:{port}/v1", transport=transport)
    result = run_cli(["run", "job.yaml"], env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    message = _stop_message(result.stderr)
    assert f"127.0.0.1:{port}" in message and "refused" in message, message
    assert "Traceback" not in result.stderr
    assert read_output(tmp_path / "out").is_empty()
    sim.configure(api_key=KEY)
    fixed = run_cli(["run", "job.yaml", "--set", f"endpoint.base_url={sim.url}/v1"], env=env, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    table = read_output(tmp_path / "out")
    assert sorted(table["id"]) == sorted(f"r{i}" for i in range(20))
    assert set(table["status"]) == {"ok"}


def test_a_host_that_does_not_resolve_stops_the_run(tmp_path: Path) -> None:
    """A `.invalid` host name: exit 3 naming the host, its port and the DNS failure; nothing saved."""
    env = _job(tmp_path, "https://batchrun-no-such-host.invalid/v1")
    result = run_cli(["run", "job.yaml"], env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    message = _stop_message(result.stderr)
    assert "batchrun-no-such-host.invalid:443" in message and "does not resolve" in message, message
    assert read_output(tmp_path / "out").is_empty()


def test_https_to_a_plain_http_server_stops_the_run(tmp_path: Path, sim: Sim) -> None:
    """https:// to the plain-HTTP simulator: the TLS handshake fails; exit 3 naming host, port, TLS; nothing saved."""
    sim.configure(api_key=KEY)
    port = sim.url.rsplit(":", 1)[1]
    env = _job(tmp_path, f"https://127.0.0.1:{port}/v1")
    result = run_cli(["run", "job.yaml"], env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    message = _stop_message(result.stderr)
    assert f"127.0.0.1:{port}" in message and "TLS" in message, message
    assert read_output(tmp_path / "out").is_empty()
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("rows", [20, 4])
def test_a_refused_key_on_every_request_is_not_a_finished_job(tmp_path: Path, sim: Sim, rows: int) -> None:
    """401 on every request, for more rows than the stop needs and for fewer: exit 3 and no row saved."""
    sim.configure(api_key="sk-the-right-key-0123456789")
    env = _job(tmp_path, f"{sim.url}/v1", rows=rows)
    result = run_cli(["run", "job.yaml"], env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "HTTP 401" in _stop_message(result.stderr)
    assert KEY not in result.stderr
    assert read_output(tmp_path / "out").is_empty()


def test_some_refusals_among_successes_are_ordinary_error_rows(tmp_path: Path, sim: Sim) -> None:
    """Once the endpoint has answered with a success, a held row is saved as the error row it is: exit 0."""
    health = EndpointHealth(lambda reason: None)
    refused = FinalError("HTTP 404: NOT_FOUND", http_status=404)
    row: ResultRow = {"id": "a", "status": "error", "http_status": 404, "error_message": refused.message}
    assert health.admit(row, refused) == []
    health.attempt_succeeded()
    ok: ResultRow = {"id": "b", "status": "ok"}
    assert health.admit(ok) == [row, ok]
    health.settle()
    assert health.verdict is None


def test_connection_failures_after_an_answer_are_transient_faults() -> None:
    """Once anything has answered, a refused connection is an ordinary retried fault, never a stop."""
    stops: list[str] = []
    health = EndpointHealth(stops.append)
    health.attempt_failed(RetryableError("HTTP 503", http_status=503))
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError:
        error = RetryableError("connection failed")
    for _ in range(10):
        health.attempt_failed(error)
    assert stops == []


def test_host_and_port_fill_in_the_default_port() -> None:
    """Messages name the port even when the URL leaves it to the scheme."""
    assert host_and_port("https://aiplatform.googleapis.com/v1/projects/p") == "aiplatform.googleapis.com:443"
    assert host_and_port("http://localhost:8080/v1") == "localhost:8080"
    assert unreachable_cause(RetryableError("HTTP 503", http_status=503)) is None
