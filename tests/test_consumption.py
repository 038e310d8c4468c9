"""Vertex's consumption options over real HTTP: the headers on the wire, the traffic type and cached tokens
in the output, the refusals at validation, and header values kept out of logs, errors and output files."""

from __future__ import annotations

from typing import Any

import pytest

from batchrun.spec import parse_spec
from tests.conftest import Job, Sim
from tests.test_features import run_ok, vertex

SHARED = "X-Vertex-AI-LLM-Shared-Request-Type"
REQUEST = "X-Vertex-AI-LLM-Request-Type"


def sent_headers(sim: Sim) -> list[dict[str, str]]:
    """The Vertex consumption headers of every recorded request, by lowercased name (HTTP names are caseless)."""
    wanted = {SHARED.lower(), REQUEST.lower()}
    return [{k.lower(): v for k, v in r.get("headers", {}).items() if k.lower() in wanted} for r in sim.requests()]


def lowered(headers: dict[str, str]) -> dict[str, str]:
    """Header names lowercased, to compare with `sent_headers`."""
    return {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize(
    ("consumption", "provisioned", "headers", "traffic"),
    [
        ("standard", "first", {}, "ON_DEMAND"),
        ("flex", "first", {SHARED: "flex"}, "ON_DEMAND_FLEX"),
        ("priority", "first", {SHARED: "priority"}, "ON_DEMAND_PRIORITY"),
        ("flex", "never", {REQUEST: "shared", SHARED: "flex"}, "ON_DEMAND_FLEX"),
        ("standard", "never", {REQUEST: "shared"}, "ON_DEMAND"),
        ("standard", "only", {REQUEST: "dedicated"}, "PROVISIONED_THROUGHPUT"),
    ],
)
def test_consumption_options_send_googles_headers(
    sim: Sim, make_job: Any, consumption: str, provisioned: str, headers: dict[str, str], traffic: str
) -> None:
    """Each consumption option sends the headers Google documents, and the answers' traffic_type is saved."""
    sim.configure(provisioned_rpm=1000 if provisioned == "only" else None, flex_latency_s=0.0)
    job: Job = make_job(n=3, endpoint=vertex(sim, location="global", consumption=consumption, provisioned=provisioned))
    table = run_ok(job)
    assert sent_headers(sim) == [lowered(headers)] * 3
    assert table["traffic_type"].to_list() == [traffic] * 3


def test_provisioned_first_spills_over_to_pay_as_you_go(sim: Sim, make_job: Any) -> None:
    """With no header, the reservation serves what it can and the rest is standard pay-as-you-go."""
    sim.configure(provisioned_rpm=4)
    table = run_ok(make_job(n=10))
    counts = dict(table.group_by("traffic_type").len().iter_rows())
    assert counts == {"PROVISIONED_THROUGHPUT": 4, "ON_DEMAND": 6}


def test_dedicated_past_the_reservation_is_a_429_that_is_retried(sim: Sim, make_job: Any) -> None:
    """provisioned: only past a full reservation gets Google's 429 'Exceeded the Provisioned Throughput', which
    is retried as any 429: the rows that ran out of attempts say why, the others are PROVISIONED_THROUGHPUT."""
    sim.configure(provisioned_rpm=3)
    job: Job = make_job(n=5, endpoint=vertex(sim, provisioned="only"), retry={"max_attempts": 2, "timeout_s": 10})
    result = job.run("run")
    table = job.table()
    ok = table.filter(table["status"] == "ok")
    assert ok["traffic_type"].to_list() == ["PROVISIONED_THROUGHPUT"] * 3
    errors = table.filter(table["status"] == "error")
    assert len(errors) == 2 and result.returncode == 0
    assert all("Exceeded the Provisioned Throughput" in m for m in errors["error_message"].to_list())
    assert errors["attempts"].to_list() == [2, 2]


def test_cached_tokens_when_a_long_system_prompt_repeats(sim: Sim, make_job: Any) -> None:
    """A long shared system prompt is cached after its first use: cached_tokens is saved, null for the first."""
    system = "You label support tickets by topic. " * 200  # 7,200 characters, about 1,800 tokens
    job: Job = make_job(n=4, limits={"concurrency": 1}, request={"system": system, "prompt": "{text}"})
    table = run_ok(job)
    cached = table["cached_tokens"].to_list()
    assert cached[0] is None and cached[1:] == [len(system) // 4] * 3
    assert all(c <= p for c, p in zip(cached[1:], table["prompt_tokens"].to_list()[1:], strict=True))


def test_short_system_prompts_are_not_cached(sim: Sim, make_job: Any) -> None:
    """A system prompt below the cache's minimum size is never served from the cache."""
    table = run_ok(make_job(n=3, limits={"concurrency": 1}, request={"system": "Be brief.", "prompt": "{text}"}))
    assert table["cached_tokens"].to_list() == [None] * 3


def test_header_values_never_reach_logs_errors_or_output(sim: Sim, make_job: Any) -> None:
    """endpoint.headers (with ${VAR}) are sent, and their values are redacted from error rows and log lines
    even when the server repeats the request's headers back in its error messages."""
    secret = "tenant-secret-4f9a2c77"
    sim.configure(echo_headers=True, max_body_bytes=10)  # every request gets a 400 that echoes its headers
    job: Job = make_job(n=2, endpoint={**vertex(sim), "headers": {"X-Tenant-Key": "${TENANT_KEY}"}})
    job.env["TENANT_KEY"] = secret
    result = job.run("run")
    assert [r["headers"]["X-Tenant-Key"] for r in sim.requests()] == [secret] * len(sim.requests())
    table = job.table()
    messages = table["error_message"].to_list()
    assert all("X-Tenant-Key: [REDACTED]" in m for m in messages), messages
    for text in (result.stdout, result.stderr, *messages):
        assert secret not in text
    assert not any(secret.encode() in p.read_bytes() for p in job.output.rglob("*.parquet"))


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (
            {"consumption": "flex", "location": "us-central1"},
            "consumption: flex is served on the global endpoint only, not in us-central1 "
            "(set endpoint.location: global)",
        ),
        (
            {"consumption": "priority", "provisioned": "only", "location": "global"},
            "provisioned: only sends every request to Provisioned Throughput, which has no priority tier",
        ),
        (
            {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "consumption": "flex"},
            "consumption chooses a Vertex AI consumption option; kind: openai servers have none",
        ),
        ({"headers": {"Authorization": "Bearer x"}}, "Authorization is set by batchrun itself"),
    ],
)
def test_refused_at_validation_with_the_fix(sim: Sim, make_job: Any, endpoint: dict[str, Any], message: str) -> None:
    """validate and run refuse options Vertex would not honour, name the fix, exit 2 and send nothing."""
    fields = {"kind": "vertex", "project": "p", **endpoint}
    job: Job = make_job(n=2, endpoint=fields)
    for command in ("validate", "run"):
        result = job.run(command)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert sim.stats()["requests"] == 0


def test_flex_waits_up_to_thirty_minutes_unless_timeout_is_set() -> None:
    """With consumption: flex an attempt may take Google's maximum of 30 minutes, unless retry.timeout_s is set."""
    base = {
        "name": "j",
        "input": {"path": "in.jsonl"},
        "output": {"path": "out"},
        "model": "m",
        "endpoint": {"kind": "simulator", "location": "global", "consumption": "flex"},
    }
    assert parse_spec(base).retry.timeout_s == 1800
    assert parse_spec({**base, "retry": {"timeout_s": 90}}).retry.timeout_s == 90
    assert parse_spec({**base, "endpoint": {"kind": "simulator"}}).retry.timeout_s == 120


def test_headers_also_go_through_the_sdk_transport(sim: Sim, make_job: Any) -> None:
    """endpoint.transport: openai (and so every stream) sends the same consumption headers."""
    sim.configure(flex_latency_s=0.0)
    endpoint = {**vertex(sim, location="global", consumption="flex"), "transport": "openai"}
    table = run_ok(make_job(n=2, endpoint=endpoint))
    assert sent_headers(sim) == [lowered({SHARED: "flex"})] * 2
    assert table["traffic_type"].to_list() == ["ON_DEMAND_FLEX"] * 2
