"""JSON Schema and tool files named in `request.params`, read into the spec so the fingerprint covers them.

Where the API expects a JSON value, a string ending in .json, .yaml or .yml is read as a file. Like every
path in a spec it is relative to the working directory (run jobs/*.yaml from the repository root):

    params.response_format.json_schema.schema: jobs/schemas/event.json   a JSON Schema
    params.tools: jobs/tools/weather.json                                 the list of tools
    params.tool_choice: jobs/tools/choice.json                            a tool_choice object

Inline YAML works in the same places. Each value is checked for its shape here, so a broken schema or tool
list is a spec error before any request, not one 400 per row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

FILE_SUFFIXES = (".json", ".yaml", ".yml")
TOOL_CHOICES = ("auto", "none", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def inline_files(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with file references replaced by the files' contents, each checked for its shape."""
    result = dict(params)
    if "response_format" in result:
        result["response_format"] = response_format(result["response_format"])
    if "tools" in result:
        result["tools"] = _tools(_maybe_file(result["tools"], "tools"))
    if "tool_choice" in result:
        result["tool_choice"] = _tool_choice(_maybe_file(result["tool_choice"], "tool_choice"))
    return result


def _maybe_file(value: Any, where: str) -> Any:
    """The parsed contents of the file `value` names, or `value` itself when it names none."""
    if not (isinstance(value, str) and value.lower().endswith(FILE_SUFFIXES)):
        return value
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"{where}: cannot read {value} ({exc.strerror or exc}); paths are relative to the working directory"
        ) from exc
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{where}: {value} is not valid {path.suffix[1:].upper()} ({exc})") from exc


def response_format(value: Any, *, read_files: bool = True) -> dict[str, Any]:
    """A checked response_format object; with `read_files`, `json_schema.schema` may name a JSON Schema file."""
    where = "response_format"
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise ValueError(f"{where}: expected {{type: {' | '.join(RESPONSE_FORMATS)}, ...}}, got {value!r}")
    if value["type"] != "json_schema":
        return value
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise ValueError(
            f"{where}.json_schema: expected {{name: ..., schema: <JSON Schema or a .json file>}} "
            "(OpenAI's json_schema object form)"
        )
    schema = _maybe_file(spec["schema"], f"{where}.json_schema.schema") if read_files else spec["schema"]
    if not isinstance(schema, dict):
        raise ValueError(f"{where}.json_schema.schema: expected a JSON Schema object, got {type(schema).__name__}")
    import jsonschema  # 0.1 s to import: only specs with a JSON Schema pay it

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"{where}.json_schema.schema is not a valid JSON Schema at {at}: {exc.message}") from exc
    return {**value, "json_schema": {**spec, "schema": schema}}


def _tools(value: Any) -> list[dict[str, Any]]:
    """A list of function tools, each with a name."""
    if not isinstance(value, list) or not value:
        raise ValueError("tools: expected a non-empty list of {type: function, function: {name, parameters}}")
    for k, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tools[{k}]: expected {{type: function, function: {{name: ..., parameters: ...}}}}")
    return value


def _tool_choice(value: Any) -> str | dict[str, Any]:
    """auto, none, required, or an object naming one function."""
    if isinstance(value, dict) or (isinstance(value, str) and value in TOOL_CHOICES):
        return value
    raise ValueError(
        f"tool_choice: expected {', '.join(TOOL_CHOICES)}, an object such as "
        f"{{type: function, function: {{name: get_weather}}}}, or a .json file holding one; got {value!r}"
    )
