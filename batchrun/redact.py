"""Scrub secrets from any text before it reaches a log line, an error message or an output file."""

from __future__ import annotations

import re

_MARK = "[REDACTED]"

# Whole matches that are secrets in themselves.
_WHOLE = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
    re.compile(r"\bya29\.[A-Za-z0-9._-]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),
]
# A label kept as context (group 1), followed by the secret it introduces.
_LABELLED = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)(\"?(?:access_token|refresh_token|id_token|api_key|private_key|client_secret|assertion)\"?"
        r"\s*[:=]\s*\"?)(?!<)[^\s\",&}]+"  # a <placeholder> in a hint is no secret
    ),
]

_known: set[str] = set()


def register(secret: str | None) -> None:
    """Remember a secret value (an API key, a token) so its exact text is always scrubbed."""
    if secret and len(secret) >= 6:
        _known.add(secret)


def redact(text: str) -> str:
    """The text with every known secret and every secret-shaped string replaced by [REDACTED]."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, _MARK)
    for pattern in _WHOLE:
        text = pattern.sub(_MARK, text)
    for pattern in _LABELLED:
        text = pattern.sub(lambda m: m.group(1) + _MARK, text)
    return text
