"""The credentials a job's endpoint needs, found in the environment before anything is created or sent.

`validate` and `run` both ask here first, so a missing API key variable or an unusable Google key
file is refused by both (exit 2) and a run creates no output directory for it. google-auth is
imported only when a job needs Google credentials.
"""

from __future__ import annotations

import os
from typing import Any

from batchrun import redact
from batchrun.errors import CredentialsError
from batchrun.spec import EndpointSpec

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def api_key(spec: EndpointSpec) -> str:
    """The API key `kind: openai` sends, from the variable `endpoint.api_key_env` names."""
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise CredentialsError(
            f"endpoint.api_key_env: environment variable {spec.api_key_env} is not set "
            f"(export {spec.api_key_env}=<your API key>)"
        )
    redact.register(key)
    return key


def google_credentials() -> Any:
    """Application Default Credentials with the cloud-platform scope (key file, gcloud, metadata server)."""
    import google.auth
    import google.auth.exceptions

    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        _check_readable(key_file)
    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise CredentialsError(_unusable(exc, key_file)) from exc
    return credentials


def _check_readable(key_file: str) -> None:
    """A key file that is not there or cannot be read, named with the fix (google-auth would raise an OSError)."""
    if not os.path.exists(key_file):
        raise CredentialsError(
            f"GOOGLE_APPLICATION_CREDENTIALS names {key_file}, which does not exist; point it at a "
            "service-account key file, or unset it to use gcloud or the metadata server"
        )
    try:
        with open(key_file, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise CredentialsError(
            f"GOOGLE_APPLICATION_CREDENTIALS names {key_file}, which cannot be read ({exc.strerror}); "
            "point it at a readable service-account key file"
        ) from exc


def _unusable(exc: Exception, key_file: str | None) -> str:
    """Why Application Default Credentials gave nothing, naming the key file when it is the culprit."""
    detail = redact.redact(str(exc))
    if key_file:
        return (
            f"the Google credentials file {key_file} (from GOOGLE_APPLICATION_CREDENTIALS) cannot be used: "
            f"{detail}; create a new key for the service account and point GOOGLE_APPLICATION_CREDENTIALS at it"
        )
    return (
        "no Google credentials found: run `gcloud auth application-default login`, set "
        f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on GCE/Cloud Run ({detail})"
    )
