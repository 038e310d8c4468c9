"""What a request may use before it is sent: its prompt tokens, expected and at most, and its answer's bound.

The expected figure (4 characters a token, 258 per media part, as Gemini bills a small image) is what
tokens/min budgets and `batchrun estimate` use. The bound is what the cost cap reserves: no tokenizer
makes more tokens than a text has UTF-8 bytes, and an answer never runs past `max_tokens` plus the
thinking budget.
"""

from __future__ import annotations

import json
import math
from typing import Any

MEDIA_TOKENS = 258  # Gemini's figure for an image up to 384 px; audio and video depend on their length
DEFAULT_ANSWER_TOKENS = 256  # what a tokens/min reservation assumes when the request sets no max_tokens
MAX_ANSWER_TOKENS = 65_536  # Gemini 2.5's largest answer: the bound when the request sets no max_tokens
MAX_THINKING_TOKENS = 24_576  # Gemini 2.5's largest thinking budget: the bound when thinking is left dynamic
EFFORT_BUDGETS = {"none": 0, "minimal": 1_024, "low": 1_024, "medium": 8_192, "high": 24_576}
_PER_MESSAGE_BOUND = 16  # role and turn markers a tokenizer may add around each message


def budget_estimate(body: dict[str, Any]) -> int:
    """Tokens a request may use, for a tokens/min budget: ~4 characters a token of the messages, plus the answer."""
    text = json.dumps(body.get("messages", []), ensure_ascii=False)
    return len(text) // 4 + (_max_tokens(body) or DEFAULT_ANSWER_TOKENS)


def expected_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt's likely size: 4 characters a token of its text, plus MEDIA_TOKENS per media part."""
    chars, _, media = _measure(body.get("messages"))
    return math.ceil(chars / 4) + MEDIA_TOKENS * media


def prompt_bound(body: dict[str, Any]) -> int:
    """At most this many prompt tokens: the text's UTF-8 bytes and each message's markers, plus its media parts."""
    _, size, media = _measure(body.get("messages"))
    messages = body.get("messages")
    count = len(messages) if isinstance(messages, list) else 0
    return size + _PER_MESSAGE_BOUND * count + MEDIA_TOKENS * media


def answer_bound(body: dict[str, Any]) -> int:
    """At most this many answer and thinking tokens: max_tokens (else Gemini's largest) plus the thinking budget."""
    return (_max_tokens(body) or MAX_ANSWER_TOKENS) * max(1, int(body.get("n") or 1)) + _thinking_bound(body)


def _max_tokens(body: dict[str, Any]) -> int | None:
    """max_completion_tokens or max_tokens, whichever the request sets."""
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _thinking_bound(body: dict[str, Any]) -> int:
    """The thinking budget the request sets (reasoning_effort or thinking_config), else Gemini's largest."""
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in EFFORT_BUDGETS:
        return EFFORT_BUDGETS[effort]
    google = (body.get("extra_body") or {}).get("google") or body.get("google") or {}
    config = google.get("thinking_config") if isinstance(google, dict) else None
    budget = config.get("thinking_budget") if isinstance(config, dict) else None
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    return MAX_THINKING_TOKENS


def _measure(messages: object) -> tuple[int, int, int]:
    """(characters, UTF-8 bytes, media parts) of the messages' text, tool calls included."""
    chars = size = media = 0
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                chars, size = chars + len(text), size + len(text.encode())
            elif isinstance(part, dict):
                media += 1
        if message.get("tool_calls"):
            calls = json.dumps(message["tool_calls"], ensure_ascii=False)
            chars, size = chars + len(calls), size + len(calls.encode())
    return chars, size, media
