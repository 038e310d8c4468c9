"""Deterministic answers for the simulator: the same request body always gets the same content.

Pure functions only (no HTTP, no clock), so the answer logic is tested without a server:

    read_conversation(messages)     tolerant parse: prompt text, token counts, media parts
    build_answer(body, conv, ...)   the choices, finish_reason and usage numbers of one request
    GeneratedAnswer.completion() / .chunks() the response body, or the stream's chunks, around an id and model
    Choice.message() / .deltas()    one choice as a whole message or as stream deltas

Anything Vertex would refuse raises `InvalidArgument`, which the server turns into a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import mimetypes
import re
import struct
import uuid
import wave
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

IMAGE_PROMPT_TOKENS = 258  # Gemini bills a small image as 258 tokens
MEDIA_PROMPT_TOKENS = 32  # audio, video and files: a flat, recognisable figure
IMAGE_OUTPUT_TOKENS = 1290  # Gemini bills one generated image as 1,290 tokens
AUDIO_OUTPUT_TOKENS = 32
EFFORT_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
DYNAMIC_BUDGET = 24576  # thinking_budget -1 lets the model choose; use the largest effort budget
MAX_CHOICES = 8  # Vertex's candidateCount limit
FULL_SCHEMA_DEPTH = 3  # deeper than this, schemas get only what they require, so recursion ends
MAX_SCHEMA_DEPTH = 32
SENTIMENT_QUESTION = re.compile(r"positive,\s*negative,?\s*or\s*neutral", re.IGNORECASE)
# word stems, matched on lowercased text (cheaper than IGNORECASE)
POSITIVE = re.compile(r"\b(love|great|excellent|amazing|awesome|perfect|fantastic|wonderful|happy|best|good|recommend)")
NEGATIVE = re.compile(r"\b(terrible|broke|refund|awful|worst|bad|disappoint|poor|return|hate|useless|waste|defect)")
PLACE = r"[A-Z][\w'-]*(?: [A-Z][\w'-]*)*"
PLACES = re.compile(rf"\b(?:in|for|at) ({PLACE})(?: and ({PLACE}))?")
MEDIA_NOUNS = {"image": "image", "audio": "audio clip", "video": "video", "file": "file"}


class InvalidArgument(Exception):
    """A request Vertex would refuse with 400 INVALID_ARGUMENT; `message` is what the server says."""

    def __init__(self, detail: str) -> None:
        self.message = f"Request contains an invalid argument. {detail}"
        super().__init__(self.message)


@dataclass(frozen=True)
class MediaPart:
    """One media part of a user message, kept undecoded until the answer needs it."""

    kind: str  # image | audio | video | file
    ref: str  # data: URI, bare base64, gs:// or https:// URI
    mime: str


@dataclass(frozen=True)
class Conversation:
    """What the simulator needs from `messages`, read without failing on odd shapes."""

    prompt: str  # text of the last user message: the answer's subject and the /_sim/counts key
    text_chars: int  # all message text, for prompt_tokens
    media: tuple[MediaPart, ...]  # parts of the last user message
    media_tokens: int  # over all messages
    last_role: str

    @property
    def prompt_tokens(self) -> int:
        """Vertex-like prompt size: 4 characters a token plus a flat figure per media part."""
        return math.ceil(self.text_chars / 4) + self.media_tokens


@dataclass(frozen=True)
class Choice:
    """One choice; the streamed deltas and the whole message come from the same fields."""

    pieces: tuple[str, ...] = ()  # content as it is streamed; joined when not streamed
    tool_calls: tuple[dict[str, Any], ...] = ()
    media: dict[str, Any] | None = None  # Vertex puts generated images in the `audio` field
    signature: str | None = None  # message-level thought_signature of generated media

    def message(self) -> dict[str, Any]:
        """The non-streamed `message`, content null when there is no text."""
        message: dict[str, Any] = {"content": "".join(self.pieces) or None, "role": "assistant"}
        if self.tool_calls:
            message["tool_calls"] = list(self.tool_calls)
        message.update(self._media_fields())
        return message

    def deltas(self, stream_arguments: bool) -> list[dict[str, Any]]:
        """The streamed deltas; every one repeats the role, as Vertex's do."""
        deltas: list[dict[str, Any]] = [{"content": piece} for piece in self.pieces]
        for k, call in enumerate(self.tool_calls):
            deltas.extend(_call_deltas(k, call, stream_arguments))
        if self.media is not None:  # the bytes come in pieces; the first carries the mime_type and signature
            first, *rest = _split(self.media["data"], 3) or [""]
            deltas.append({**self._media_fields(), "audio": {**self.media, "data": first}})
            deltas.extend({"audio": {"data": piece}} for piece in rest)
        return [{**delta, "role": "assistant"} for delta in deltas or [{}]]

    def _media_fields(self) -> dict[str, Any]:
        """The `audio` and `extra_content` fields of a generated image or sound."""
        if self.media is None:
            return {}
        return {"audio": self.media, "extra_content": _google(thought_signature=self.signature)}


@dataclass(frozen=True)
class GeneratedAnswer:
    """Everything a response needs except its id, clock and model name."""

    choices: tuple[Choice, ...]  # empty when the output was cut off before any token
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int | None  # None: Vertex omits it together with `message`
    reasoning_tokens: int
    stream_arguments: bool

    @property
    def total_tokens(self) -> int:
        """Vertex's total: prompt + completion + reasoning."""
        return self.prompt_tokens + (self.completion_tokens or 0) + self.reasoning_tokens

    def completion(self, head: dict[str, Any], traffic_type: str) -> dict[str, Any]:
        """A chat.completion around `head` (id, created, model); cut off, the choice has no message."""
        choices: list[dict[str, Any]] = [
            {"finish_reason": self.finish_reason, "index": i, "logprobs": None, "message": c.message()}
            for i, c in enumerate(self.choices)
        ] or [{"finish_reason": self.finish_reason, "index": 0}]
        usage = self.usage(traffic_type)
        return {**head, "choices": choices, "object": "chat.completion", "system_fingerprint": "", "usage": usage}

    def chunks(self, head: dict[str, Any], traffic_type: str) -> list[dict[str, Any]]:
        """Stream chunks: each choice's deltas, its last with finish_reason; usage only on the very last."""
        head = {**head, "object": "chat.completion.chunk", "system_fingerprint": ""}
        per_choice = [c.deltas(self.stream_arguments) for c in self.choices] or [[{"role": "assistant"}]]
        chunks: list[dict[str, Any]] = []
        for index, deltas in enumerate(per_choice):
            for k, delta in enumerate(deltas):
                choice: dict[str, Any] = {"delta": delta, "index": index, "logprobs": None}
                if k == len(deltas) - 1:
                    choice["finish_reason"] = self.finish_reason
                chunks.append({**head, "choices": [choice]})
        chunks[-1]["usage"] = self.usage(traffic_type)
        return chunks

    def usage(self, traffic_type: str) -> dict[str, Any]:
        """The `usage` object; reasoning details only when the model thought."""
        usage: dict[str, Any] = {
            "extra_properties": _google(traffic_type=traffic_type),
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.completion_tokens is not None:
            usage["completion_tokens"] = self.completion_tokens
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


def read_conversation(messages: object) -> Conversation:
    """Collect prompt text, sizes and media; shapes the answer rejects later are skipped here."""
    items = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    chars = media_tokens = 0
    prompt, last_role = "", ""
    media: tuple[MediaPart, ...] = ()
    for message in items:
        texts, parts = _read_content(message.get("content"))
        chars += sum(map(len, texts))
        media_tokens += sum(IMAGE_PROMPT_TOKENS if p.kind == "image" else MEDIA_PROMPT_TOKENS for p in parts)
        last_role = str(message.get("role", ""))
        if last_role == "user":
            prompt, media = "\n".join(texts), parts
    return Conversation(prompt, chars, media, media_tokens, last_role)


def build_answer(body: Mapping[str, Any], conv: Conversation, *, model: str, broken_json: bool) -> GeneratedAnswer:
    """Answer one request as Gemini would shape it; raise InvalidArgument where Vertex answers 400."""
    try:
        return _answer(body, conv, model, broken_json)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        # a field of an unexpected JSON type somewhere in the body: Vertex refuses those too
        raise InvalidArgument(f"Malformed request ({type(exc).__name__}: {exc}).") from exc


def _answer(body: Mapping[str, Any], conv: Conversation, model: str, broken_json: bool) -> GeneratedAnswer:
    """build_answer's work, on a body whose odd shapes may raise anything."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages must be a non-empty list.")
    google = _google_options(body)
    n, limit = _int_param(body, "n", 1, MAX_CHOICES), _max_tokens(body)
    reasoning, thoughts = _thinking(body, google, conv.prompt)
    _check_thought_signatures(messages, model)
    kind, text, make = _plan(body, conv, describe_media(conv.media), broken_json)
    if limit is not None and limit <= 2:
        return GeneratedAnswer((), "length", conv.prompt_tokens, None, reasoning, False)
    finish = "tool_calls" if kind == "tools" else "stop"
    if limit is not None and len(text) > limit * 4:
        text, finish = text[: limit * 4], "length"
    made = [make() for _ in range(n)]
    completion = n * math.ceil(len(text) / 4) + sum(tokens for _, tokens in made)
    marker = google.get("thought_tag_marker")
    choices = tuple(_with_text(choice, text, thoughts, marker) for choice, _ in made)
    streamed = bool(google.get("stream_function_call_arguments"))
    return GeneratedAnswer(choices, finish, conv.prompt_tokens, completion, reasoning, streamed)


def describe_media(parts: tuple[MediaPart, ...]) -> str:
    """Say what media arrived, decoding inline data so bad base64 is refused as Vertex does."""
    groups: dict[str, list[str]] = {}
    for part in parts:
        groups.setdefault(part.kind, []).append(f"{part.mime}, {_media_size(part)}")
    if not groups:
        return ""
    said = [
        f"{len(items)} {MEDIA_NOUNS[kind]}{'s' if len(items) > 1 else ''} ({'; '.join(items)})"
        for kind, items in groups.items()
    ]
    return f"I received {' and '.join(said)}."


def classify(text: str) -> str:
    """Sentiment by keyword counts: the answer a sample review job expects."""
    lowered = text.lower()
    score = len(POSITIVE.findall(lowered)) - len(NEGATIVE.findall(lowered))
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def instance_from_schema(schema: Any, hint: str, *, root: Any = None, depth: int = 0) -> Any:
    """The smallest instance the schema accepts, strings taken from `hint`, so answers validate."""
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidArgument("The schema is too deeply nested.")
    if not isinstance(schema, dict):
        return hint
    root = schema if root is None else root
    if "$ref" in schema:
        return instance_from_schema(_resolve_ref(root, schema["$ref"]), hint, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return hint if hint in schema["enum"] else schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if not (isinstance(o, dict) and o.get("type") == "null")]
            return instance_from_schema((options or schema[key])[0], hint, root=root, depth=depth + 1)
    if schema.get("allOf"):
        return instance_from_schema(_merge_all_of(schema, root), hint, root=root, depth=depth + 1)
    kind = _schema_type(schema)
    if kind == "object":
        return _object_instance(schema, hint, root, depth)
    if kind == "array":
        return _array_instance(schema, hint, root, depth)
    return _scalar_instance(kind, schema, hint)


def png_bytes(seed: str) -> bytes:
    """A valid 8x8 PNG in one colour taken from the seed's hash."""
    red, green, blue = hashlib.sha256(seed.encode()).digest()[:3]
    row = b"\x00" + bytes((red, green, blue)) * 8  # filter byte 0, then 8 RGB pixels
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)  # 8x8, 8-bit, truecolour
    chunks = ((b"IHDR", header), (b"IDAT", zlib.compress(row * 8)), (b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(tag, data) for tag, data in chunks)


def wav_bytes(seed: str) -> bytes:
    """A valid 0.1 s mono WAV tone whose pitch comes from the seed's hash."""
    rate, pitch = 8000, 220 + hashlib.sha256(seed.encode()).digest()[0] * 2
    levels = [int(8000 * math.sin(2 * math.pi * pitch * i / rate)) for i in range(rate // 10)]
    samples = struct.pack(f"<{len(levels)}h", *levels)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return buffer.getvalue()


def thought_signature(seed: str) -> str:
    """An opaque base64 signature, stable for the same turn."""
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def snippet(text: str, size: int) -> str:
    """The text on one line, cut to `size` characters."""
    return " ".join(text.split())[:size]


# --- conversation parts ---------------------------------------------------------------------------


def _read_content(content: object) -> tuple[list[str], tuple[MediaPart, ...]]:
    """The text pieces and media parts of one message's content (string or list of parts)."""
    if isinstance(content, str):
        return [content], ()
    if not isinstance(content, list):
        return [], ()
    texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    media = tuple(m for m in map(_media_part, content) if m is not None)
    return texts, media


def _media_part(part: object) -> MediaPart | None:
    """Read an image_url, input_audio or file part (image_url also carries video and PDFs)."""
    if not isinstance(part, dict):
        return None
    if "image_url" in part:
        image = part["image_url"]
        ref = str(image.get("url", "") if isinstance(image, dict) else image)
        mime = _mime_of(ref, None, "image/jpeg")
        return MediaPart(_kind_of(mime), ref, mime)
    if isinstance(part.get("input_audio"), dict):
        audio = part["input_audio"]
        form = str(audio.get("format", "wav"))
        ref = str(audio.get("data", ""))
        return MediaPart("audio", ref, _mime_of(ref, form if "/" in form else f"audio/{form}", "audio/wav"))
    if isinstance(part.get("file"), dict):
        file = part["file"]
        ref = str(file.get("file_data") or file.get("file_id") or "")
        named = mimetypes.guess_type(str(file.get("filename", "")))[0]
        return MediaPart("file", ref, _mime_of(ref, named, "application/octet-stream"))
    return None


def _mime_of(ref: str, declared: str | None, fallback: str) -> str:
    """The type a data: URI states, else the part's declared type, else a guess from the URI."""
    if ref.startswith("data:"):
        return ref[5:].split(";", 1)[0].split(",", 1)[0] or declared or fallback
    if declared:
        return declared
    guessed = mimetypes.guess_type(ref)[0] if ref.startswith(("gs://", "http://", "https://")) else None
    return guessed or fallback


def _kind_of(mime: str) -> str:
    """image, audio, video or file, from a MIME type."""
    major = mime.split("/", 1)[0]
    return major if major in ("image", "audio", "video") else "file"


def _media_size(part: MediaPart) -> str:
    """`N bytes` for inline data, the URI itself for gs:// and https:// references."""
    ref = part.ref
    if ref.startswith(("gs://", "http://", "https://")):
        return ref
    payload = ref.split(",", 1)[1] if ref.startswith("data:") and "," in ref else ref
    try:
        return f"{len(base64.b64decode(payload, validate=True))} bytes"
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"Base64 decoding failed for the {part.kind} part.") from exc


# --- request options ------------------------------------------------------------------------------


def _google_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Vertex's own options, sent on the wire as a top-level `extra_body.google`."""
    extra = body.get("extra_body")
    google = extra.get("google") if isinstance(extra, dict) else None
    return google if isinstance(google, dict) else {}


def _int_param(body: Mapping[str, Any], name: str, default: int, most: int) -> int:
    """An integer parameter in 1..most, else 400."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidArgument(f"{name} must be between 1 and {most}.")
    return value


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    """max_completion_tokens or max_tokens, whichever is given."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _int_param(body, name, 0, 2**31) if body.get(name) is not None else None


def _thinking(body: Mapping[str, Any], google: Mapping[str, Any], prompt: str) -> tuple[int, str | None]:
    """Reasoning tokens and the thoughts text to show, from reasoning_effort or thinking_config."""
    effort, config = body.get("reasoning_effort"), google.get("thinking_config")
    if effort is not None and config is not None:
        raise InvalidArgument("Send reasoning_effort or thinking_config.")
    if effort is not None:
        if effort == "none":
            return 0, None
        if effort not in EFFORT_BUDGETS:
            raise InvalidArgument(f"Unknown reasoning_effort {effort!r}.")
        return _reasoning_tokens(EFFORT_BUDGETS[effort], prompt), None
    if not isinstance(config, dict):
        return 0, None
    budget = config.get("thinking_budget", -1)
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise InvalidArgument("thinking_budget must be an integer.")
    tokens = _reasoning_tokens(DYNAMIC_BUDGET if budget < 0 else budget, prompt)
    shown = f"Thinking about: {snippet(prompt, 40)}..." if tokens and config.get("include_thoughts") else None
    return tokens, shown


def _reasoning_tokens(budget: int, prompt: str) -> int:
    """A stable, prompt-dependent figure within the budget."""
    return min(budget, 40 + len(prompt) % 50)


def _check_thought_signatures(messages: list[Any], model: str) -> None:
    """Gemini 3 refuses a history whose function-call turn lost its thought_signature."""
    if "gemini-3" not in model:
        return
    for position, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if isinstance(calls, list) and calls and message.get("role") == "assistant" and not _signed(calls[0]):
            name = calls[0].get("function", {}).get("name", "") if isinstance(calls[0], dict) else ""
            raise InvalidArgument(
                f"Unable to submit request because function call `{name}` in the {position + 1}. content "
                "block is missing a `thought_signature`. Learn more: "
                "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/thought-signatures"
            )


def _signed(call: object) -> bool:
    """Whether a tool call carries extra_content.google.thought_signature."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    return isinstance(google, dict) and bool(google.get("thought_signature"))


# --- answers --------------------------------------------------------------------------------------

Made = tuple[Choice, int]  # a choice without its text, and its completion tokens beyond that text
MEDIA_OUTPUTS: tuple[tuple[str, str, Callable[[str], bytes], int], ...] = (
    ("image", "image/png", png_bytes, IMAGE_OUTPUT_TOKENS),
    ("audio", "audio/wav", wav_bytes, AUDIO_OUTPUT_TOKENS),
)


def _plan(
    body: Mapping[str, Any], conv: Conversation, media_note: str, broken_json: bool
) -> tuple[str, str, Callable[[], Made]]:
    """Pick media, tool calls or text: the kind, the text all choices share, a maker of the rest."""
    modalities = body.get("modalities") or []
    output = next((o for o in MEDIA_OUTPUTS if o[0] in modalities), None)
    if output is not None:
        _, mime, render, tokens = output
        media = _media_choice(base64.b64encode(render(conv.prompt)).decode(), mime, conv.prompt)
        return "media", "", lambda: (media, tokens)
    function = _chosen_function(body, conv)
    if function is not None:
        return "tools", "", lambda: _tool_choice(function, conv.prompt)
    if conv.last_role == "tool":
        text = _tool_result_answer(body["messages"][-1])
    else:
        text = _text_answer(conv.prompt, media_note)
    return "text", _shape(text, body.get("response_format"), conv.prompt, broken_json), lambda: (Choice(), 0)


def _with_text(choice: Choice, text: str, thoughts: str | None, marker: object) -> Choice:
    """Put the thoughts (tagged when a marker is set) and the answer text into the content pieces."""
    pieces = _split(text, 3)
    if thoughts and marker:
        pieces = [f"<{marker}>{thoughts}</{marker}>", *pieces]
    elif thoughts:
        pieces = [f"{thoughts}\n\n", *pieces]
    return replace(choice, pieces=tuple(pieces))


def _text_answer(prompt: str, media_note: str) -> str:
    """One sentiment word when asked for one, else a sentence derived from the prompt."""
    if SENTIMENT_QUESTION.search(prompt):
        return classify(prompt)
    return " ".join(filter(None, (f"Simulated answer to: {snippet(prompt, 60)}", media_note)))


def _shape(text: str, response_format: object, prompt: str, broken_json: bool) -> str:
    """Turn the answer into JSON when response_format asks for it; cut it when told to break it."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        document: Any = {"answer": text}
    elif kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidArgument("json_schema.schema is required.")
        hint = classify(prompt) if SENTIMENT_QUESTION.search(prompt) else snippet(prompt, 40)
        document = instance_from_schema(spec["schema"], hint)
    else:
        return text
    encoded = json.dumps(document)
    return encoded[: len(encoded) // 2] if broken_json else encoded  # any proper prefix is invalid JSON


def _media_choice(data: str, mime: str, prompt: str) -> Choice:
    """A generated image or sound, placed where Vertex puts it."""
    media = {"data": data, "extra_content": _google(mime_type=mime)}
    return Choice(media=media, signature=thought_signature(f"media:{prompt}"))


def _chosen_function(body: Mapping[str, Any], conv: Conversation) -> dict[str, Any] | None:
    """The function to call, or None when the turn should be answered with text."""
    tools = body.get("tools")
    listed = tools if isinstance(tools, list) else []
    functions: list[dict[str, Any]] = [
        t["function"] for t in listed if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if not functions or choice == "none" or conv.last_role == "tool":
        return None
    if not isinstance(choice, dict):
        return functions[0]
    name = choice.get("function", {}).get("name") if isinstance(choice.get("function"), dict) else None
    named = [f for f in functions if f.get("name") == name]
    if not named:
        raise InvalidArgument(f"tool_choice names unknown function {name!r}.")
    return named[0]


def _tool_choice(function: dict[str, Any], prompt: str) -> Made:
    """One call per place the prompt names (at most two); the first carries the thought_signature."""
    name = str(function.get("name", ""))
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    found = PLACES.search(prompt)
    hints = [h for h in found.groups() if h] if found else [snippet(prompt, 40)]
    calls = []
    for k, hint in enumerate(hints):
        arguments = json.dumps(instance_from_schema(parameters, hint), separators=(",", ":"))
        call: dict[str, Any] = {
            "function": {"arguments": arguments, "name": name},
            "id": f"function-call-{uuid.uuid4()}",
            "type": "function",
        }
        if k == 0:
            call["extra_content"] = _google(thought_signature=thought_signature(f"{name}:{prompt}"))
        calls.append(call)
    tokens = sum(math.ceil((len(name) + len(c["function"]["arguments"])) / 4) for c in calls)
    return Choice(tool_calls=tuple(calls)), tokens


def _tool_result_answer(message: Mapping[str, Any]) -> str:
    """A reply that quotes the tool result and names the files it attached."""
    texts, _ = _read_content(message.get("content"))
    extra = message.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    parts = google.get("parts") if isinstance(google, dict) else None
    listed = parts if isinstance(parts, list) else []
    files = [p["file_data"] for p in listed if isinstance(p, dict) and isinstance(p.get("file_data"), dict)]
    said = [f"Based on the tool result: {snippet(' '.join(texts), 80)}"]
    said += [
        f"I received the file {f.get('display_name') or f.get('file_uri', '')} "
        f"({f.get('mime_type', 'application/octet-stream')}, {f.get('file_uri', '')})."
        for f in files
    ]
    return " ".join(said)


def _call_deltas(k: int, call: dict[str, Any], stream_arguments: bool) -> list[dict[str, Any]]:
    """Deltas of one tool call: whole, or (stream_function_call_arguments) a header then pieces."""
    if not stream_arguments:
        return [{"tool_calls": [{**call, "index": k}]}]
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    # Google's captured sample gives the header chunk an index that is off by one (1 for the first
    # call, k-1 after); clients must key calls by id, so the simulator keeps that quirk.
    header = {**call, "function": {"arguments": "", "name": name}, "index": 1 if k == 0 else k - 1}
    pieces = [
        {"function": {"arguments": piece, "name": name}, "id": call["id"], "index": k, "type": "function"}
        for piece in _split(arguments, 4)
    ]
    return [{"tool_calls": [part]} for part in (header, *pieces)]


def _split(text: str, parts: int) -> list[str]:
    """Cut text into at most `parts` non-empty pieces of about equal length."""
    size = max(1, math.ceil(len(text) / parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _google(**fields: Any) -> dict[str, Any]:
    """Wrap fields as Vertex's `{"google": {...}}` extension object."""
    return {"google": fields}


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# --- JSON schema instances ------------------------------------------------------------------------


def _schema_type(schema: Mapping[str, Any]) -> str:
    """The schema's type, inferred from its keywords when not given; null only when nothing else is."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else "array" if "items" in schema else "string"


def _resolve_ref(root: Any, ref: object) -> Any:
    """Follow a local `#/...` JSON pointer ($defs, definitions)."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise InvalidArgument(f"Only local $ref is supported: {ref!r}.")
    node = root
    for token in filter(None, ref[1:].split("/")):
        key = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            raise InvalidArgument(f"Unresolvable $ref {ref!r}.")
        node = node[key]
    return node


def _merge_all_of(schema: Mapping[str, Any], root: Any) -> dict[str, Any]:
    """One schema from allOf parts: properties and required lists united, other keys overwritten."""
    merged: dict[str, Any] = {"properties": {}, "required": []}
    rest = {k: v for k, v in schema.items() if k != "allOf"}
    for part in [*schema["allOf"], rest]:
        part = _resolve_ref(root, part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
        for key, value in part.items() if isinstance(part, dict) else ():
            if key == "properties":
                merged["properties"].update(value)
            elif key == "required":
                merged["required"] += value
            else:
                merged[key] = value
    return merged


def _object_instance(schema: Mapping[str, Any], hint: str, root: Any, depth: int) -> dict[str, Any]:
    """All listed properties near the top, only the required ones deeper down."""
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    names = [n for n in properties if depth < FULL_SCHEMA_DEPTH or n in required]
    instance = {n: instance_from_schema(properties[n], hint, root=root, depth=depth + 1) for n in names}
    instance.update({n: hint for n in required if n not in instance})
    return instance


def _array_instance(schema: Mapping[str, Any], hint: str, root: Any, depth: int) -> list[Any]:
    """One item near the top (or minItems), distinct string hints so uniqueItems holds."""
    least = int(schema.get("minItems", 0))
    count = max(1, least) if depth < FULL_SCHEMA_DEPTH else least
    count = min(count, int(schema.get("maxItems", count)))
    items = schema.get("items", {})
    return [
        instance_from_schema(items, hint if i == 0 else f"{hint} {i + 1}", root=root, depth=depth + 1)
        for i in range(count)
    ]


def _scalar_instance(kind: str, schema: Mapping[str, Any], hint: str) -> Any:
    """Strings from the hint (or a valid sample of their format), numbers 1 within bounds, true."""
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    formats = {
        "date": "2024-01-01",
        "date-time": "2024-01-01T00:00:00Z",
        "time": "00:00:00Z",
        "email": "sim@example.com",
        "uri": "https://example.com/",
        "uuid": str(uuid.UUID(int=0)),
    }
    text = formats.get(str(schema.get("format")), hint)
    text = text.ljust(int(schema.get("minLength", 0)), "x")
    return text[: int(schema["maxLength"])] if "maxLength" in schema else text


def _number(schema: Mapping[str, Any], integer: bool) -> int | float:
    """1, moved inside minimum/maximum (exclusive bounds by one step)."""
    step = 1 if integer else 0.5
    value: int | float = 1
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = max(value, schema["exclusiveMinimum"] + step)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = min(value, schema["exclusiveMaximum"] - step)
    return math.ceil(value) if integer else value
