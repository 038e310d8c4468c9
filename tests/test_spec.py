"""The job spec: validation, env expansion, and messages that name the YAML path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import SpecError
from batchrun.spec import load_spec, parse_spec

BASE = {
    "name": "job",
    "input": {"path": "in.jsonl"},
    "endpoint": {"kind": "simulator"},
    "model": "google/gemini-2.5-flash",
    "request": {"prompt": "{text}"},
    "output": {"path": "out"},
}


def spec_with(**sections: object) -> dict[str, object]:
    return {**BASE, **sections}


def test_minimal_spec_gets_design_defaults() -> None:
    """Unset sections take the defaults of docs/design.md §1 (64 in flight, 8 attempts, 120 s)."""
    spec = parse_spec(BASE)
    assert spec.limits.concurrency == 64
    assert spec.retry.max_attempts == 8
    assert spec.retry.timeout_s == 120
    assert spec.endpoint.location == "us-central1"


def test_unknown_key_names_the_nearest_valid_key() -> None:
    """A typo is an error that names the path and suggests the right key."""
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(limits={"concurency": 4}))
    assert "limits.concurency: unknown key; did you mean 'concurrency'?" in err.value.message


def test_unknown_top_level_key() -> None:
    """Top-level typos are caught too."""
    with pytest.raises(SpecError, match="modle: unknown key; did you mean 'model'"):
        parse_spec({**BASE, "modle": "x"})


def test_wrong_type_names_the_path() -> None:
    """A wrong type says where."""
    with pytest.raises(SpecError, match="limits.concurrency"):
        parse_spec(spec_with(limits={"concurrency": "many"}))


def test_env_expansion_with_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} and ${VAR:-default} expand from the environment."""
    monkeypatch.setenv("BR_PROJECT", "p1")
    monkeypatch.delenv("BR_UNSET", raising=False)
    spec = parse_spec(
        spec_with(endpoint={"kind": "vertex", "project": "${BR_PROJECT}", "location": "${BR_UNSET:-global}"})
    )
    assert spec.endpoint.project == "p1"
    assert spec.endpoint.location == "global"


def test_unset_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable without default names the variable and the YAML path."""
    monkeypatch.delenv("BR_MISSING", raising=False)
    with pytest.raises(SpecError, match=r"endpoint.project: environment variable BR_MISSING is not set"):
        parse_spec(spec_with(endpoint={"kind": "vertex", "project": "${BR_MISSING}"}))


def test_vertex_needs_a_project() -> None:
    """kind: vertex without project or base_url is refused with the fix."""
    with pytest.raises(SpecError, match="endpoint.project is required"):
        parse_spec(spec_with(endpoint={"kind": "vertex"}))


def test_reasoning_effort_and_thinking_config_conflict() -> None:
    """Vertex accepts only one of reasoning_effort and thinking_config."""
    request = {"prompt": "{text}", "params": {"reasoning_effort": "low"}, "google": {"thinking_config": {}}}
    with pytest.raises(SpecError, match="not both"):
        parse_spec(spec_with(request=request))
    by_hand = {"reasoning_effort": "low", "extra_body": {"google": {"thinking_config": {"thinking_budget": 9}}}}
    with pytest.raises(SpecError, match="not both"):  # the same conflict, thinking_config written as the seeds do
        parse_spec(spec_with(request={"prompt": "{text}", "params": by_hand}))


@pytest.mark.parametrize("n", [2, 0])
def test_n_other_than_one_is_refused(n: int) -> None:
    """A row holds one answer: n other than 1 is refused, saying why and what to do instead."""
    with pytest.raises(SpecError, match="n must be 1"):
        parse_spec(spec_with(request={"prompt": "{text}", "params": {"n": n}}))


def test_model_may_be_omitted_for_a_self_deployed_endpoint() -> None:
    """endpoint_id replaces model."""
    raw = {k: v for k, v in BASE.items() if k != "model"}
    raw["endpoint"] = {"kind": "vertex", "project": "p", "endpoint_id": "123"}
    assert parse_spec(raw).model is None
    raw["endpoint"] = {"kind": "vertex", "project": "p"}
    with pytest.raises(SpecError, match="model is required"):
        parse_spec(raw)


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    """Broken YAML names the file and line."""
    path = tmp_path / "job.yaml"
    path.write_text("name: x\ninput: [\n")
    with pytest.raises(SpecError, match=r"job.yaml: line \d+"):
        load_spec(path)


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    """--set key.path=value overrides with YAML-typed values."""
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path, ["limits.concurrency=3", "request.params.temperature=0.5"])
    assert spec.limits.concurrency == 3
    assert spec.request.params == {"temperature": 0.5}


def test_fingerprint_ignores_limits_but_not_prompt() -> None:
    """Changing limits keeps the output usable; changing the prompt does not."""
    a = parse_spec(BASE)
    b = parse_spec(spec_with(limits={"concurrency": 2}))
    c = parse_spec(spec_with(request={"prompt": "other {text}"}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
