"""Log lines as Cloud Logging reads them: one JSON object each, library records included, secrets scrubbed."""

from __future__ import annotations

import json
import logging
import warnings

import pytest

from batchrun import redact
from batchrun.progress import log_event, structured_logging


def test_fields_are_scrubbed_like_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A secret in any field, nested or not, never reaches the line."""
    redact.register("sk-test-abcdefghijklmnop")
    log_event("ERROR", "failed with sk-test-abcdefghijklmnop", detail={"headers": ["Bearer abcdefghijkl"]})
    line = json.loads(capsys.readouterr().err)
    assert line["severity"] == "ERROR" and "sk-test" not in json.dumps(line)
    assert line["detail"] == {"headers": ["Bearer [REDACTED]"]}


def test_library_logs_and_warnings_become_json_lines(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal, what gcsfs, google-auth or asyncio log (and Python warnings) is structured too."""
    structured_logging()
    logging.getLogger("gcsfs").warning("retrying after token ya29.a0secret-token-value")
    logging.getLogger("gcsfs").info("too chatty to keep")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["severity"] for line in lines] == ["WARNING", "WARNING"]
    assert lines[0]["message"] == "gcsfs: retrying after token [REDACTED]"
    assert "an old API" in lines[1]["message"]
