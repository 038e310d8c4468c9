"""`validate` refuses what `run` refuses: missing API keys, unusable Google credentials, unknown simulator
settings and base URLs that are not URLs each exit 2 from both, with the fix, and nothing is created."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Job


def _api_key_unset(job: Job) -> str:
    """kind: openai whose api_key_env names an unset variable."""
    _endpoint(job, {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "NO_SUCH_KEY_VAR"})
    job.env.pop("NO_SUCH_KEY_VAR", None)
    return "NO_SUCH_KEY_VAR is not set (export NO_SUCH_KEY_VAR=<your API key>)"


def _credentials_missing(job: Job) -> str:
    """GOOGLE_APPLICATION_CREDENTIALS names a file that is not there."""
    job.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(job.dir / "nowhere.json")
    return f"GOOGLE_APPLICATION_CREDENTIALS names {job.dir / 'nowhere.json'}, which does not exist"


def _credentials_unreadable(job: Job) -> str:
    """GOOGLE_APPLICATION_CREDENTIALS names something that cannot be read as a file (a directory)."""
    (job.dir / "keys").mkdir()
    job.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(job.dir / "keys")
    return f"GOOGLE_APPLICATION_CREDENTIALS names {job.dir / 'keys'}, which cannot be read"


def _credentials_not_json(job: Job) -> str:
    """A key file cut short: not JSON."""
    (job.dir / "cut.json").write_text('{"type": "service_account", "private_')
    job.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(job.dir / "cut.json")
    return f"the Google credentials file {job.dir / 'cut.json'} (from GOOGLE_APPLICATION_CREDENTIALS) cannot be used"


def _credentials_bad_key(job: Job) -> str:
    """A key file whose private key is damaged."""
    info = json.loads(Path(job.env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    info["private_key"] = info["private_key"].replace("A", "B")
    (job.dir / "bad.json").write_text(json.dumps(info))
    job.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(job.dir / "bad.json")
    return "create a new key for the service account"


def _unknown_simulator_setting(job: Job) -> str:
    """kind: simulator with a misspelt setting."""
    _endpoint(job, {"kind": "simulator", "simulator": {"rate_hnag": 0.1}})
    return "endpoint.simulator: unknown simulator setting 'rate_hnag'; did you mean 'rate_hang'?"


def _base_url_without_scheme(job: Job) -> str:
    """A base_url with no http(s)://: every request would fail to connect."""
    _endpoint(job, {"kind": "openai", "base_url": "localhost:8080/v1", "api_key_env": "K"})
    job.env["K"] = "sk-anything-long-enough"
    return "'localhost:8080/v1' is not an http:// or https:// URL with a host"


def _endpoint(job: Job, endpoint: dict[str, Any]) -> None:
    """Replace the job's endpoint section."""
    spec = yaml.safe_load(job.spec.read_text())
    spec["endpoint"] = endpoint
    job.spec.write_text(yaml.safe_dump(spec))


CASES = [
    pytest.param(_api_key_unset, id="api-key-unset"),
    pytest.param(_credentials_missing, id="credentials-missing"),
    pytest.param(_credentials_unreadable, id="credentials-unreadable"),
    pytest.param(_credentials_not_json, id="credentials-not-json"),
    pytest.param(_credentials_bad_key, id="credentials-bad-key"),
    pytest.param(_unknown_simulator_setting, id="unknown-simulator-setting"),
    pytest.param(_base_url_without_scheme, id="base-url-without-scheme"),
]


@pytest.mark.parametrize("mistake", CASES)
def test_validate_and_run_refuse_it_alike_and_create_nothing(make_job: Any, mistake: Any) -> None:
    """Both commands exit 2 with the same message and the fix; no output directory appears."""
    job = make_job(n=3)
    expected = mistake(job)
    for command in ("validate", "run"):
        result = job.run(command)
        assert result.returncode == 2, (command, result.stderr)
        assert expected in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert not job.output.exists(), f"{command} created {job.output}"
