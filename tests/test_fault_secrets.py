"""No secret reaches a log line, an error message or an output file, even when the endpoint echoes them.

Each run puts real credentials in play (a service-account key and the tokens Google auth gets with
it, an API key, JWT assertions) against a simulator whose error bodies repeat the request's headers
or form, then greps everything the run left: stdout, stderr (JSON log lines included), `status`,
and every output file, read both as raw bytes and decoded from Parquet.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchrun.simulator import make_service_account_info
from tests.conftest import Job
from tests.faults import complaints, numbered_rows, record

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")
SIM_TOKEN = "ya29.sim-"  # every access token the simulator issues starts so; any leaked one shows it


def _everything(job: Job, *outputs: str) -> str:
    """All text a user or a log pipeline can see after the run: streams, status, and every output file."""
    texts = list(outputs)
    texts.append(job.run("status").stdout)
    for path in job.output.rglob("*") if job.output.exists() else []:
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
            if path.suffix == ".parquet":
                texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
    return "\n".join(texts)


def _key_material(key_file: Path) -> list[str]:
    """The private key's base64 lines: any one of them in the open is a leak."""
    pem = json.loads(key_file.read_text())["private_key"]
    return [line for line in pem.splitlines() if line and "PRIVATE KEY" not in line]


def _leaks(text: str, secrets_: list[str]) -> list[str]:
    """Which of the secrets (or any access token, JWT or PEM header) appear in the text."""
    found = [s[:12] + "..." for s in secrets_ if s in text]
    if SIM_TOKEN in text:
        found.append("an access token")
    found += [f"JWT {m[:12]}..." for m in JWT.findall(text)]
    if "PRIVATE KEY" in text:
        found.append("a PEM private key header")
    return found


def test_service_account_run_with_echoing_failures_leaks_nothing(sim: Any, make_job: Any, key_file: Path) -> None:
    """Vertex with a service-account key: 500s, 400s and 401s that echo the bearer token end as rows and logs."""
    rows = numbered_rows(60)
    rows[5]["text"] = "x" * 30_000
    job = make_job(rows, retry__max_attempts=2)
    sim.configure(echo_headers=True, rate_500=0.3, max_body_bytes=20_000, revoke_every_s=0.5, latency_s=0.02, seed=6)
    result = job.run("run", "--log-interval", "0.2")
    assert result.returncode == 0, result.stderr
    tokens = sim.stats()["tokens_issued"]
    text = _everything(job, result.stdout, result.stderr)
    table = job.table()
    echoed = table.filter(table["error_message"].str.contains("request headers", literal=True))
    assert echoed.height > 0, "some error rows must carry the echoed headers, or the test proves nothing"
    assert "Bearer [REDACTED]" in " ".join(echoed["error_message"])
    assert tokens >= 2, "revocations must have put several tokens in play"
    assert not _leaks(text, _key_material(key_file))
    record(
        "secrets: service-account key, tokens echoed by 400/401/500 bodies",
        tokens_in_play=tokens,
        echoing_error_rows=echoed.height,
        leaks=0,
        example=echoed["error_message"][0][:160],
    )


def test_api_key_run_with_echoing_failures_leaks_nothing(sim: Any, make_job: Any) -> None:
    """kind: openai with an API key of no known shape: the echoed key is scrubbed because it was registered."""
    key = "k3y" + secrets.token_hex(20)
    rows = numbered_rows(40)
    job = make_job(
        rows,
        retry__max_attempts=2,
        endpoint={"kind": "openai", "base_url": f"{sim.url}/v1", "api_key_env": "BATCHRUN_TEST_KEY"},
    )
    job.env["BATCHRUN_TEST_KEY"] = key
    sim.configure(api_key=key, echo_headers=True, rate_500=0.4, seed=6)
    result = job.run("run", "--log-interval", "0.2")
    assert result.returncode == 0, result.stderr
    text = _everything(job, result.stdout, result.stderr)
    assert "request headers" in text
    assert not _leaks(text, [key])
    record("secrets: API key echoed by 500 bodies", leaks=0, error_rows=int((job.table()["status"] == "error").sum()))


def test_refused_credentials_echoing_the_assertion_leak_nothing(sim: Any, make_job: Any, key_file: Path) -> None:
    """The token endpoint refuses the key and repeats the signed assertion: the stop message shows neither."""
    info = json.loads(key_file.read_text())
    forged = key_file.with_name("forged-key.json")
    forged.write_text(json.dumps({**info, "private_key_id": _other_key_id(sim)}))
    job = make_job(numbered_rows(5))
    job.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(forged)
    sim.configure(echo_headers=True)
    result = job.run("run")
    assert result.returncode == 3, result.stderr
    assert "Google auth refused the credentials" in result.stderr
    assert "assertion=" in result.stderr, "the echoed form must reach the message, redacted"
    assert not _leaks(_everything(job, result.stdout, result.stderr), _key_material(key_file))
    record(
        "secrets: token endpoint refuses the key and echoes the JWT assertion",
        exit_code=3,
        leaks=0,
        message=_error_line(result.stderr),
    )


def _other_key_id(sim: Any) -> str:
    """The id of another key the simulator knows, so it checks this key's signature against the wrong one."""
    return make_service_account_info(f"{sim.url}/token")["private_key_id"]


def test_broken_key_file_shows_no_key_material(sim: Any, make_job: Any, key_file: Path) -> None:
    """A service-account key file whose private key is damaged: a clear stop, and not a byte of the key."""
    info = json.loads(key_file.read_text())
    lines = info["private_key"].splitlines()
    info["private_key"] = "\n".join([*lines[:5], lines[5][::-1], *lines[6:]])
    key_file.write_text(json.dumps(info))
    job = make_job(numbered_rows(5))
    result = job.run("run")
    assert result.returncode in (2, 3), result.stderr
    assert "Traceback" not in result.stderr
    assert f"credentials file {key_file}" in _error_line(result.stderr), "the message names the damaged file"
    assert not _leaks(_everything(job, result.stdout, result.stderr), _key_material(key_file))
    record(
        "secrets: damaged service-account key file",
        exit_code=result.returncode,
        leaks=0,
        message=_error_line(result.stderr),
    )


def _error_line(stderr: str) -> str:
    """The message a stopped run ends with."""
    return complaints(stderr)[-1]
