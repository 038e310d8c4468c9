"""What ties a saved row to the request it answered (its request_hash), and a job's record (job.json).

Every run stamps each row with its request_hash; a rerun compares those (comparison.py) to tell which rows
changed. The hash covers the request body as sent (model, messages, params, extra_body) and the endpoint's
identity (kind, project, location, endpoint id, API version, base URL): never a token, key or header.
Media parts are hashed as their column value (the path or URI), so comparing never reads a file.

The job record (job.json) is compared here, and only here: whether it says this spec over this input,
which request-shaping keys changed since, and whether `--keep` holds for them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchrun.errors import RowInputError
from batchrun.prompts import Renderer
from batchrun.sources import Record
from batchrun.spec import JobSpec

HASH_CHARS = 32
_ENDPOINT_KEYS = ("kind", "project", "location", "endpoint_id", "api_version", "base_url")


class RequestHasher:
    """The request_hash of a row under one spec: the same function for the row a run saves and for a rerun."""

    def __init__(self, spec: JobSpec, renderer: Renderer) -> None:
        endpoint = {key: getattr(spec.endpoint, key) for key in _ENDPOINT_KEYS}
        self._prefix = hashlib.sha256(json.dumps(endpoint, sort_keys=True).encode() + b"\n")  # hashed once
        self._renderer = renderer
        self._media = bool(spec.request.media)

    def of_body(self, body: dict[str, Any]) -> str:
        """The hash of a rendered body with this endpoint."""
        digest = self._prefix.copy()
        digest.update(json.dumps(body, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:HASH_CHARS]

    def of_error(self, reason: str) -> str:
        """The hash of a row that makes no request: its reason, so fixing the row makes it pending again."""
        return self.of_body({"input_error": reason})

    def of_sent(self, record: Record, body: dict[str, Any]) -> str:
        """The hash of a row sent with `body` (media rows: rendered again without reading their files)."""
        return self.of_record(record) if self._media else self.of_body(body)

    def of_record(self, record: Record) -> str:
        """The hash of the request an input row makes under this spec now, or of the reason it makes none."""
        if record.data is None:
            return self.of_error(record.error or "unreadable row")
        try:
            return self.of_body(self._renderer.render(record, read_media=False))
        except RowInputError as exc:
            return self.of_error(str(exc))


def job_record(spec: JobSpec, identity: dict[str, Any]) -> dict[str, Any]:
    """What job.json says about the job that last ran: its fingerprint, its input and each key that shapes a request."""
    return {"fingerprint": spec.fingerprint(), "input": identity, "request": request_keys(spec)}


def request_keys(spec: JobSpec) -> dict[str, Any]:
    """Every spec key that shapes a request, dotted (`request.params.max_tokens`), as JSON values."""
    keys: dict[str, Any] = {"model": spec.model}
    keys |= {f"endpoint.{key}": getattr(spec.endpoint, key) for key in _ENDPOINT_KEYS}
    for key, value in spec.request.model_dump().items():
        if key in ("params", "google"):
            keys |= {f"request.{key}.{name}": item for name, item in value.items()}
        else:
            keys[f"request.{key}"] = value
    return json.loads(json.dumps(keys, default=str))  # type: ignore[no-any-return]


def changed_keys(recorded: dict[str, Any] | None, spec: JobSpec) -> list[str]:
    """The request-shaping keys in which the spec differs from the recorded one (none known: empty)."""
    old = (recorded or {}).get("request")
    if not isinstance(old, dict):
        return []
    new = request_keys(spec)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def keep_key(record: dict[str, Any]) -> str:
    """What job.json's `kept` holds after --keep: this spec over this input, so the same run asks no more."""
    text = json.dumps({key: record[key] for key in ("fingerprint", "input", "request")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_job(recorded: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether job.json was written for this spec over this input (so it need not be written again)."""
    return recorded is not None and all(recorded.get(key) == value for key, value in record.items())


def kept_for(recorded: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether `run --keep` was given for this spec over this input, so its changed rows stay as they are."""
    return recorded is not None and recorded.get("kept") == keep_key(record)
