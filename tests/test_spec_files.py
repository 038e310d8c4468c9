"""Schema and tool files in request.params: read relative to the working directory, checked, in the fingerprint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import SpecError
from batchrun.spec import parse_spec

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def spec(params: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "name": "j",
            "input": {"path": "in.jsonl"},
            "endpoint": {"kind": "simulator"},
            "model": "google/gemini-2.5-flash",
            "request": {"prompt": "{text}", "params": params},
            "output": {"path": "out"},
        }
    )


def schema_format(schema: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own working directory, which relative paths resolve against."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_schema_tools_and_tool_choice_files_are_read(in_tmp: Path) -> None:
    """JSON and YAML files are replaced by their contents; inline values stay as written."""
    (in_tmp / "schemas").mkdir()
    (in_tmp / "schemas" / "n.json").write_text(json.dumps(SCHEMA))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    (in_tmp / "tools.yaml").write_text("- type: function\n  function: {name: f, parameters: {type: object}}\n")
    (in_tmp / "choice.json").write_text('{"type": "function", "function": {"name": "f"}}')
    params = spec(
        {**schema_format("schemas/n.json"), "tools": "tools.yaml", "tool_choice": "choice.json"}
    ).request.params
    assert params["response_format"]["json_schema"] == {"name": "n", "schema": SCHEMA}
    assert params["tools"] == tools
    assert params["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    inline = spec({**schema_format(SCHEMA), "tools": tools, "tool_choice": "required"}).request.params
    assert inline["response_format"]["json_schema"]["schema"] == SCHEMA and inline["tool_choice"] == "required"


def test_the_fingerprint_follows_the_file_contents(in_tmp: Path) -> None:
    """Editing a schema file changes the job's fingerprint, so old output is not silently mixed in."""
    (in_tmp / "s.json").write_text(json.dumps(SCHEMA))
    before = spec(schema_format("s.json")).fingerprint()
    (in_tmp / "s.json").write_text(json.dumps({**SCHEMA, "required": []}))
    assert spec(schema_format("s.json")).fingerprint() != before


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (schema_format("nope.json"), "response_format.json_schema.schema: cannot read nope.json"),
        (schema_format("bad.json"), "bad.json is not valid JSON"),
        (schema_format({"type": "objekt"}), "not a valid JSON Schema at type"),
        ({"response_format": {"type": "json"}}, "response_format: expected {type: text | json_object | json_schema"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema: expected {name: ..., schema:"),
        ({"tools": [{"type": "function"}]}, r"tools\[0\]: expected \{type: function, function:"),
        ({"tools": "tools.json"}, "tools: cannot read tools.json"),
        ({"tool_choice": "sometimes"}, "tool_choice: expected auto, none, required"),
    ],
)
def test_bad_files_and_shapes_are_spec_errors(params: dict[str, Any], message: str, in_tmp: Path) -> None:
    """Each problem is one message under request.params naming the file or key and the expected shape."""
    (in_tmp / "bad.json").write_text("{not json")
    with pytest.raises(SpecError, match=message) as err:
        spec(params)
    assert "request.params: " in err.value.message
