"""What every benchmark needs: the simulator in its own process, inputs, job specs, measured child runs.

Every figure is taken from a child process's own rusage (`os.wait4`), so the simulator's CPU never
counts as batchrun's and the machine's other load shows up only as wall time.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
API_KEY = "bench-key"
MODEL = "google/gemini-2.5-flash"
SYSTEM = "You classify product reviews."
PROMPT = "Review of a {product}: {text}\nAnswer positive, negative or neutral."
PRODUCTS = ["headphones", "backpack", "kettle", "phone case", "desk lamp", "running shoes", "blender"]
WORDS = [
    "great",
    "value",
    "fast",
    "shipping",
    "terrible",
    "broke",
    "after",
    "two",
    "days",
    "refund",
    "fits",
    "love",
    "this",
    "would",
    "recommend",
    "poor",
    "quality",
    "returned",
    "it",
    "works",
    "as",
    "described",
    "battery",
    "lasts",
    "all",
    "day",
    "arrived",
    "late",
    "box",
    "was",
    "damaged",
    "sound",
    "is",
    "clear",
    "comfortable",
    "to",
    "wear",
    "cheap",
    "plastic",
    "exactly",
    "what",
    "I",
    "needed",
]


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on the path, no cloud credentials, the bench key,
    and bytecode cached as an installed package has it (the checkout's own in a bench directory of its own:
    with PYTHONDONTWRITEBYTECODE, which this machine sets, every child compiled batchrun's modules afresh
    while the baselines' libraries came compiled)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUD_RUN_", "GCE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "batchrun-bench-pycache")
    env["PYTHONPATH"] = str(REPO)
    env["BENCH_API_KEY"] = API_KEY
    env["NO_GCE_CHECK"] = "true"
    return env


class SimProcess:
    """`python -m batchrun.simulator` in its own process, steered over its admin endpoints."""

    def __init__(self, **config: Any) -> None:
        handle, log = tempfile.mkstemp(prefix="bench-sim-", suffix=".log")
        os.close(handle)
        self._log = Path(log)
        with self._log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "batchrun.simulator", "--port", "0", "--config", json.dumps(config)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=child_env(),
                cwd=REPO,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator did not start: {self._log.read_text()[-2000:]}")
        self.url: str = json.loads(line)["url"]
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change settings while it runs."""
        return self._call("/_sim/config", fields)  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Zero the counters and the quota windows."""
        self._call("/_sim/reset", {})

    def stats(self) -> dict[str, Any]:
        """requests, by_status, max_in_flight, ..."""
        return self._call("/_sim/stats")  # type: ignore[no-any-return]

    def arrivals(self) -> tuple[list[float], list[int]]:
        """Every chat request's arrival time and status."""
        data = self._call("/_sim/arrivals")
        return data["t"], data["status"]

    def cpu_seconds(self) -> float:
        """The simulator's own CPU so far (to tell when it, not batchrun, is the bottleneck)."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class Measured:
    """One child run: exit code, wall seconds, its own CPU seconds and peak RSS, and its output."""

    rc: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str


def measure(args: list[str], *, cwd: Path, timeout: float, kill_when: Any = None) -> Measured:
    """Run a child to the end (or SIGKILL it when `kill_when()` turns true); its CPU from its rusage, its peak
    RSS from its own VmHWM.

    Not rusage's ru_maxrss: Linux carries a process's peak across execve, and the child starts as a fork
    of this process, so ru_maxrss reads at least this process's own peak (175 MB where the child peaked at
    134, after this process had generated a Parquet input).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=child_env(), stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        peak = _PeakWatch(proc.pid)
        if kill_when is not None:
            _watch(proc, kill_when)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            peak.stop()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            rc=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=peak.kib / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


class _PeakWatch:
    """Reads a child's VmHWM (its own high-water mark since its exec) every 10 ms until it exits."""

    def __init__(self, pid: int) -> None:
        self.kib = 0
        self._path = f"/proc/{pid}/status"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                with open(self._path) as status:
                    line = next((line for line in status if line.startswith("VmHWM:")), None)
            except OSError:
                return
            if line is None:  # exiting: its memory is gone
                return
            self.kib = max(self.kib, int(line.split()[1]))
            self._done.wait(0.01)

    def stop(self) -> None:
        """Stop reading (the child has been reaped)."""
        self._done.set()
        self._thread.join()


def _watch(proc: subprocess.Popen[bytes], kill_when: Any) -> None:
    """Poll `kill_when` in a thread and SIGKILL the child the moment it holds."""

    def loop() -> None:
        while proc.poll() is None:
            if kill_when():
                proc.kill()
                return
            time.sleep(0.05)

    threading.Thread(target=loop, daemon=True).start()


def review_rows(n: int, seed: int = 7, words: tuple[int, int] = (6, 30)) -> Any:
    """`n` synthetic review rows with ids, products, stars and texts of `words` words (log-uniform)."""
    rng = random.Random(seed)
    low, high = math.log(words[0]), math.log(words[1])
    for i in range(n):
        text = rng.choices(WORDS, k=round(math.exp(rng.uniform(low, high))))
        yield {
            "review_id": f"r{i:08d}",
            "product": rng.choice(PRODUCTS),
            "stars": rng.randint(1, 5),
            "text": " ".join(text).capitalize() + ".",
        }


def write_jsonl(path: Path, n: int, words: tuple[int, int] = (6, 30)) -> Path:
    """A JSONL input of `n` review rows."""
    with path.open("w") as handle:
        for row in review_rows(n, words=words):
            handle.write(json.dumps(row) + "\n")
    return path


def write_parquet(path: Path, n: int) -> Path:
    """The same rows as Parquet, written in row groups so the generator never holds them all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("review_id", pa.string()), ("product", pa.string()), ("stars", pa.int64()), ("text", pa.string())]
    )
    rows = review_rows(n)
    with pq.ParquetWriter(path, schema) as writer:
        while True:
            chunk = [row for _, row in zip(range(65_536), rows, strict=False)]
            if not chunk:
                break
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
    return path


def write_spec(
    directory: Path,
    url: str,
    input_path: Path,
    *,
    limits: dict[str, Any] | None = None,
    endpoint: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
) -> Path:
    """A `kind: openai` job spec for the simulator at `url` (the route the bare-SDK baseline uses too)."""
    spec = {
        "name": "bench",
        "input": {"path": str(input_path), "id_column": "review_id"},
        "endpoint": {"kind": "openai", "base_url": f"{url}/v1", "api_key_env": "BENCH_API_KEY", **(endpoint or {})},
        "model": MODEL,
        "request": {"system": SYSTEM, "prompt": PROMPT, "params": {"temperature": 0, "max_tokens": 256}},
        "limits": {"concurrency": 64, **(limits or {})},
        "retry": {"max_attempts": 8, "timeout_s": 60},
        "output": {"path": str(directory / "out"), "keep_columns": ["product", "stars"], **(output or {})},
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def batchrun(*args: str) -> list[str]:
    """The command line a user types, as this interpreter runs it."""
    return [PYTHON, "-m", "batchrun", *args]


def output_rows(directory: Path) -> int:
    """Rows saved under a job's output directory."""
    import polars as pl

    out = directory / "out"
    if not list(out.glob("*.parquet")):
        return 0
    return int(pl.scan_parquet(f"{out}/*.parquet").select(pl.len()).collect().item())
