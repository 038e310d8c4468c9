"""What `batchrun run` imports before its first request: heavy libraries load only on the paths that use them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "polars",
    "jsonschema",
    "requests",
    "google.auth.transport.requests",
    "openai",
    "httpx",
    "pyarrow.compute",
    "pyarrow.parquet",
    "tenacity",
    "fsspec",
    "rich",
]


NETWORK = ["aiohttp", "openai", "httpx", "google.auth.transport", "batchrun.transport", "batchrun.client"]


def loaded_after(code: str, watched: list[str] = HEAVY) -> list[str]:
    """The watched modules a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint(__import__('json').dumps([m for m in {watched!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_run_path_imports_no_heavy_module() -> None:
    """The CLI, runner, client and endpoints (all a plain `kind: openai` run imports) load none of the heavy modules."""
    assert loaded_after("import batchrun.cli, batchrun.runner, batchrun.client, batchrun.endpoints") == []


def test_heavy_modules_load_where_used() -> None:
    """A JSON Schema check loads jsonschema, and Google tokens load google-auth's requests transport."""
    assert loaded_after(
        "from batchrun.results import ResultBuilder\n"
        "ResultBuilder(thought_marker=None, response_format={'type': 'json_schema', "
        "'json_schema': {'name': 'x', 'schema': {'type': 'object'}}})"
    ) == ["jsonschema"]
    assert "requests" in loaded_after("from batchrun.auth import GoogleTokens\nGoogleTokens(None)")


def test_read_only_commands_never_import_the_network_path() -> None:
    """status, report, export and export-media only read the output: no HTTP client, SDK or token transport loads."""
    commands = "status, report, export, export_media, tables"
    assert loaded_after(f"from batchrun.commands import {commands}", NETWORK) == []
