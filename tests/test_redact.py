"""Secrets never survive redact(): tokens, keys, private keys, labelled values."""

from __future__ import annotations

from batchrun import redact


def test_patterns_and_registered_values() -> None:
    """Bearer tokens, ya29 tokens, private keys, API keys and registered values are all scrubbed."""
    redact.register("my-very-secret-key-123")
    text = (
        "Authorization: Bearer abcdefghijklmnop ya29.a0AfH6SMB token my-very-secret-key-123 "
        '{"access_token": "tok123456"} '
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- sk-abcdefghijklmnopqrstu"
    )
    out = redact.redact(text)
    for secret in (
        "abcdefghijklmnop",
        "ya29.a0AfH6SMB",
        "my-very-secret-key-123",
        "tok123456",
        "MIIE",
        "sk-abcdefghij",
    ):
        assert secret not in out
    assert "Bearer [REDACTED]" in out
