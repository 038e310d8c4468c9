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


def test_a_placeholder_in_a_hint_is_kept() -> None:
    """`export OPENAI_API_KEY=<your API key>` tells a user what to do: the <placeholder> is no secret to hide."""
    hint = "environment variable BENCH_API_KEY is not set (export BENCH_API_KEY=<your API key>)"
    assert redact.redact(hint) == hint
    assert redact.redact("BENCH_API_KEY=sk-live-123456") == "BENCH_API_KEY=[REDACTED]"
