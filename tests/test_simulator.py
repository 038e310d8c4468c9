"""The simulator over real HTTP: Google's auth flows, Vertex's wire format, faults and quotas."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import google.auth.transport.requests
import jsonschema
import openai
import pytest
from google.auth import crypt, jwt
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from pydantic import BaseModel

from batchrun.simulator import SimulatorConfig, SimulatorThread, make_service_account_info, vertex_base_url
from batchrun.simulator.answers import instance_from_schema

REPO = Path(__file__).resolve().parent.parent
MODEL = "google/gemini-2.5-flash"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
SENTIMENT = "Review: I love it, excellent quality.\nAnswer positive, negative or neutral."
REFRESH_GRANT = "grant_type=refresh_token&client_id=id&client_secret=secret&refresh_token=1//sim"
CHAT = "/v1/projects/sim-project/locations/us-central1/endpoints/openapi/chat/completions"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
        },
    },
}


class FakeClock:
    """Monotonic time the test moves by hand, so quotas and expiry need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    """An HTTP response, whatever its status."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A running simulator, the fake clock it reads and a token it issued."""

    thread: SimulatorThread
    clock: FakeClock
    token: str

    @property
    def url(self) -> str:
        return self.thread.url

    def post(self, path: str, body: Any, *, token: str | None = None) -> Reply:
        """POST JSON with the server's token unless another (or "" for none) is given."""
        token = self.token if token is None else token
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return fetch(self.url + path, data=json.dumps(body).encode(), headers=headers)

    def grant(self, form: str) -> Reply:
        """POST a form to the OAuth2 token endpoint, as google-auth does."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return fetch(self.url + "/token", data=form.encode(), headers=headers)

    def chat(self, *, token: str | None = None, path: str = CHAT, **fields: Any) -> Reply:
        """A chat request on the Vertex path; fields override a one-message default body."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], **fields}
        return self.post(path, body, token=token)

    def ask(self, content: Any, **fields: Any) -> dict[str, Any]:
        """A successful chat answer's JSON for one user message."""
        reply = self.chat(messages=[{"role": "user", "content": content}], **fields)
        assert reply.status == 200, reply.body
        return reply.json()  # type: ignore[no-any-return]

    def configure(self, **changes: Any) -> None:
        """Change settings through /_sim/config, as another process would."""
        assert self.post("/_sim/config", changes).status == 200

    def get(self, path: str) -> Any:
        return fetch(self.url + path).json()

    def client(self, **options: Any) -> openai.OpenAI:
        """The openai SDK on the Vertex path, no retries."""
        return openai.OpenAI(base_url=vertex_base_url(self.url), api_key=self.token, max_retries=0, **options)


def fetch(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """urllib without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


def metadata_token(url: str) -> str:
    """A token from the simulator's metadata server: the cheapest valid credential."""
    path = "/computeMetadata/v1/instance/service-accounts/default/token"
    return str(fetch(url + path, headers={"Metadata-Flavor": "Google"}).json()["access_token"])


def google_error(reply: Reply) -> dict[str, Any]:
    """The error object of Google's list-shaped error body."""
    body = reply.json()
    assert isinstance(body, list) and len(body) == 1, body
    return body[0]["error"]  # type: ignore[no-any-return]


@pytest.fixture
def server() -> Iterator[Server]:
    """A fresh simulator on a loopback port with a fake clock, and a token it accepts."""
    clock = FakeClock()
    with SimulatorThread(clock=clock) as thread:
        yield Server(thread, clock, metadata_token(thread.url))


# --- auth ---------------------------------------------------------------------------------------------


def test_service_account_flow_token_authorizes_vertex_chat(server: Server) -> None:
    """google-auth's real service-account refresh yields a token the Vertex path accepts."""
    info = make_service_account_info(server.url + "/token")
    credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]  # google-auth is unannotated
    credentials.refresh(google.auth.transport.requests.Request())
    client = openai.OpenAI(base_url=vertex_base_url(server.url), api_key=credentials.token, max_retries=0)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": SENTIMENT}])
    assert answer.choices[0].message.content == "positive"
    assert answer.model == MODEL
    assert credentials.expiry is not None and server.get("/_sim/stats")["tokens_issued"] == 2


def test_authorized_user_refresh_grant_issues_a_token(server: Server) -> None:
    """gcloud-style user credentials refresh through the refresh_token grant."""
    credentials = user_credentials.Credentials(  # type: ignore[no-untyped-call]  # google-auth is unannotated
        None, refresh_token="1//sim", client_id="id", client_secret="secret", token_uri=server.url + "/token"
    )
    credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]  # google-auth is unannotated
    assert server.chat(token=credentials.token).status == 200


def test_token_endpoint_checks_audience_scope_and_signature(server: Server) -> None:
    """Assertions with a wrong aud, no scope or a forged signature are refused like Google's endpoint."""
    info = make_service_account_info(server.url + "/token")
    signer = crypt.RSASigner.from_service_account_info(info)  # type: ignore[no-untyped-call]  # google-auth is unannotated
    forger = crypt.RSASigner.from_service_account_info(make_service_account_info(server.url + "/token"))  # type: ignore[no-untyped-call]  # google-auth is unannotated
    now = int(time.time())
    claims = {
        "iss": info["client_email"],
        "aud": "https://oauth2.googleapis.com/token",
        "scope": SCOPES[0],
        "iat": now,
        "exp": now + 3600,
    }

    def grant(assertion: bytes) -> Reply:
        return server.grant(f"grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion={assertion.decode()}")

    assert grant(jwt.encode(signer, claims)).status == 200  # type: ignore[no-untyped-call]  # google-auth is unannotated
    assert grant(jwt.encode(signer, {**claims, "aud": server.url})).json()["error"] == "invalid_grant"  # type: ignore[no-untyped-call]  # google-auth is unannotated
    no_scope = {k: v for k, v in claims.items() if k != "scope"}
    assert grant(jwt.encode(signer, no_scope)).json()["error"] == "invalid_scope"  # type: ignore[no-untyped-call]  # google-auth is unannotated
    forged = grant(jwt.encode(forger, claims, key_id=info["private_key_id"]))  # type: ignore[no-untyped-call]  # google-auth is unannotated
    assert (forged.status, forged.json()["error_description"]) == (400, "Invalid JWT Signature.")


def test_token_expires_in_alternates_number_and_string(server: Server) -> None:
    """expires_in comes as an int, then a string, so clients must parse both."""
    first, second = (server.grant(REFRESH_GRANT).json() for _ in range(2))
    assert {type(first["expires_in"]), type(second["expires_in"])} == {int, str}
    assert first["token_type"] == "Bearer" and first["access_token"].startswith("ya29.sim-")


def test_token_endpoint_fails_until_deadline(server: Server) -> None:
    """token_fail_for_s makes the token endpoint answer 503 until the deadline passes."""
    server.configure(token_fail_for_s=30)
    assert server.grant(REFRESH_GRANT).status == 503
    server.clock.now += 31
    assert server.grant(REFRESH_GRANT).status == 200


def test_missing_or_foreign_token_is_401(server: Server) -> None:
    """No token, or one the simulator never issued, gets Google's 401 UNAUTHENTICATED list body."""
    for token in ("", "ya29.made-up"):
        reply = server.chat(token=token)
        error = google_error(reply)
        assert (reply.status, error["status"]) == (401, "UNAUTHENTICATED")
        assert error["message"].startswith("Request had invalid authentication credentials.")


def test_revoked_and_expired_tokens_are_401(server: Server) -> None:
    """revoke_now, revoke_every_s and token_ttl_s all turn a working token into a 401."""
    server.configure(revoke_now=True)
    assert server.chat().status == 401
    server.configure(token_ttl_s=100)
    server.token = metadata_token(server.url)
    server.clock.now += 99
    assert server.chat().status == 200
    server.clock.now += 2
    assert server.chat().status == 401
    server.configure(token_ttl_s=3600, revoke_every_s=10)
    server.token = metadata_token(server.url)
    server.clock.now += 9
    assert server.chat().status == 200
    server.clock.now += 2
    assert server.chat().status == 401


def test_api_key_on_vertex_path_is_refused(server: Server) -> None:
    """Vertex refuses API keys with its own 401 message."""
    server.configure(api_key="AIza-sim-key")
    error = google_error(server.chat(token="AIza-sim-key"))
    assert error["message"].startswith("API keys are not supported by this API.")


def test_openai_style_paths_require_the_api_key(server: Server) -> None:
    """/v1/chat/completions takes only the configured key; the Gemini API path answers in Google's style."""
    server.configure(api_key="sk-sim")
    wrong = server.chat(token="sk-wrong", path="/v1/chat/completions")
    assert wrong.status == 401 and isinstance(wrong.json()["error"], dict)
    assert google_error(server.chat(token="sk-wrong", path="/v1beta/openai/chat/completions"))["code"] == 401
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-sim", max_retries=0)
    answer = client.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": SENTIMENT}])
    assert answer.choices[0].message.content == "positive"


def test_metadata_server_requires_flavor_header(server: Server) -> None:
    """Without Metadata-Flavor: Google the metadata server refuses, and always names itself."""
    reply = fetch(server.url + "/computeMetadata/v1/project/project-id")
    assert reply.status == 403 and reply.headers["Metadata-Flavor"] == "Google"
    ok = fetch(server.url + "/computeMetadata/v1/project/project-id", headers={"Metadata-Flavor": "Google"})
    assert ok.body == b"sim-project"


def test_metadata_server_flow_in_subprocess(server: Server, tmp_path: Path) -> None:
    """google.auth.default() finds the simulator as a GCE metadata server and its token works."""
    script = (
        "import json, google.auth, google.auth.transport.requests as r\n"
        f"creds, project = google.auth.default(scopes={SCOPES!r})\n"
        "creds.refresh(r.Request())\n"
        "print(json.dumps({'project': project, 'token': creds.token, 'email': creds.service_account_email}))\n"
    )
    host = server.url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    env |= {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["project"] == "sim-project" and found["email"].endswith(".iam.gserviceaccount.com")
    assert server.chat(token=found["token"]).status == 200


# --- limits and faults ----------------------------------------------------------------------------------


def test_rpm_quota_refuses_without_counting_refusals(server: Server) -> None:
    """Over rpm_quota a request gets a 429 list body; refused requests do not fill the window."""
    server.configure(rpm_quota=2)
    assert [server.chat().status for _ in range(3)] == [200, 200, 429]
    server.clock.now += 30
    error = google_error(server.chat())
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert "error-code-429" in error["message"]
    server.clock.now += 31
    assert [server.chat().status for _ in range(3)] == [200, 200, 429]


def test_tpm_quota_counts_prompt_and_completion_tokens(server: Server) -> None:
    """A prompt that would overflow the window, counting earlier prompts and completions, is refused."""
    server.configure(tpm_quota=30)
    first = server.ask("x" * 40)
    assert first["usage"]["total_tokens"] <= 30
    assert server.chat(messages=[{"role": "user", "content": "x" * 40}]).status == 429
    server.clock.now += 61
    assert server.chat(messages=[{"role": "user", "content": "x" * 40}]).status == 200


def test_storm_and_retry_info(server: Server) -> None:
    """storm_for_s answers every request 429 until the deadline, with Retry-After and RetryInfo."""
    server.configure(storm_for_s=20, retry_after_s=7)
    reply = server.chat()
    assert reply.status == 429 and reply.headers["Retry-After"] == "7"
    assert google_error(reply)["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    server.clock.now += 21
    assert server.chat().status == 200


@pytest.mark.parametrize(
    ("rate", "status", "name"),
    [("rate_429", 429, "RESOURCE_EXHAUSTED"), ("rate_500", 500, "INTERNAL"), ("rate_503", 503, "UNAVAILABLE")],
)
def test_random_status_faults(server: Server, rate: str, status: int, name: str) -> None:
    """Each status fault answers with its Google status name and is counted by status."""
    server.configure(**{rate: 1.0})
    reply = server.chat()
    assert (reply.status, google_error(reply)["status"]) == (status, name)
    assert server.get("/_sim/stats")["by_status"] == {str(status): 1}


def test_reset_fault_drops_the_connection(server: Server) -> None:
    """rate_reset closes the connection with no response at all."""
    server.configure(rate_reset=1.0)
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        server.chat()
    stats = server.get("/_sim/stats")
    assert (stats["resets"], stats["by_status"]) == (1, {})


def test_hang_fault_outlives_the_client_timeout(server: Server) -> None:
    """rate_hang never answers; the handler ends when the client gives up."""
    server.configure(rate_hang=1.0)
    client = server.client(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    deadline = time.monotonic() + 5
    while server.get("/_sim/stats")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = server.get("/_sim/stats")
    assert (stats["hangs"], stats["in_flight"]) == (1, 0)


def test_truncated_fault_is_a_200_with_broken_json(server: Server) -> None:
    """rate_truncated sends status 200 and half a body."""
    server.configure(rate_truncated=1.0)
    reply = server.chat()
    assert reply.status == 200
    with pytest.raises(json.JSONDecodeError):
        reply.json()
    assert server.get("/_sim/stats")["truncated"] == 1


def test_invalid_json_answer_for_response_format(server: Server) -> None:
    """rate_invalid_json_answer makes a JSON-mode answer's content unparseable."""
    server.configure(rate_invalid_json_answer=1.0)
    content = server.ask("hi", response_format={"type": "json_object"})["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def test_faults_follow_the_seed(server: Server) -> None:
    """The same seed gives the same fault sequence; /_sim/reset starts it again."""
    server.configure(rate_500=0.5, seed=7)
    first = [server.chat().status for _ in range(20)]
    server.post("/_sim/reset", {})
    assert [server.chat().status for _ in range(20)] == first
    assert set(first) == {200, 500}


def test_latency_and_concurrency_figures(server: Server) -> None:
    """latency_s delays each answer; concurrent requests show in max_in_flight."""
    server.configure(latency_s=0.2)
    started = time.monotonic()
    threads = [threading.Thread(target=server.chat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started >= 0.2
    assert server.get("/_sim/stats")["max_in_flight"] == 4


def test_payload_size_limit(server: Server) -> None:
    """A body over max_body_bytes gets Vertex's 400 message."""
    server.configure(max_body_bytes=1000)
    error = google_error(server.chat(messages=[{"role": "user", "content": "x" * 2000}]))
    assert error["message"] == "Request payload size exceeds the limit: 1000 bytes."


# --- answers --------------------------------------------------------------------------------------------


def test_response_shape_matches_vertex(server: Server) -> None:
    """Keys sorted at every level, empty fingerprint, null logprobs, 22-char id, usage with traffic_type."""

    def sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        assert [k for k, _ in pairs] == sorted(k for k, _ in pairs)
        return dict(pairs)

    body = json.loads(
        server.chat(messages=[{"role": "user", "content": SENTIMENT}]).body, object_pairs_hook=sorted_object
    )
    assert (body["object"], body["system_fingerprint"], len(body["id"])) == ("chat.completion", "", 22)
    assert body["choices"][0]["logprobs"] is None and body["choices"][0]["message"]["content"] == "positive"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["extra_properties"] == {"google": {"traffic_type": "ON_DEMAND"}}
    assert "completion_tokens_details" not in usage


def test_sentiment_keywords(server: Server) -> None:
    """A sentiment question is answered with one word from keyword lists."""

    def ask(review: str) -> str:
        prompt = f"Review: {review}\nAnswer positive, negative or neutral."
        return str(server.ask(prompt)["choices"][0]["message"]["content"])

    assert [ask("It broke, I want a refund"), ask("It is a chair")] == ["negative", "neutral"]


def test_model_required_on_managed_path_and_echoed_on_self_deployed(server: Server) -> None:
    """Managed models need `model`; a self-deployed endpoint answers as its endpoint id."""
    assert server.chat(model=None).status == 400
    path = "/v1beta1/projects/sim-project/locations/global/endpoints/1234567/chat/completions"
    assert server.chat(path=path, model=None).json()["model"] == "1234567"


def test_thinking_config_tags_thoughts(server: Server) -> None:
    """include_thoughts with a marker puts tagged thoughts before the answer and counts reasoning tokens."""
    google = {"thinking_config": {"include_thoughts": True, "thinking_budget": 1024}, "thought_tag_marker": "think"}
    body = server.ask(SENTIMENT, extra_body={"google": google})
    content = body["choices"][0]["message"]["content"]
    assert content.startswith("<think>Thinking about: ") and content.endswith("</think>positive")
    usage = body["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning <= 1024
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] + reasoning
    untagged = server.ask(SENTIMENT, extra_body={"google": {"thinking_config": {"include_thoughts": True}}})
    assert untagged["choices"][0]["message"]["content"].startswith("Thinking about: ")


def test_reasoning_effort(server: Server) -> None:
    """reasoning_effort thinks without showing thoughts; none does not think; both options at once is 400."""
    low = server.ask(SENTIMENT, reasoning_effort="low")
    assert low["choices"][0]["message"]["content"] == "positive"
    assert low["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert "completion_tokens_details" not in server.ask(SENTIMENT, reasoning_effort="none")["usage"]
    both = server.chat(reasoning_effort="low", extra_body={"google": {"thinking_config": {"thinking_budget": 9}}})
    assert google_error(both)["status"] == "INVALID_ARGUMENT"


class Address(BaseModel):
    """A nested model, so the schema carries $defs and $ref."""

    city: str
    zip_code: int | None = None


class Extraction(BaseModel):
    """A structured-output target as a user would declare it."""

    name: str
    sentiment: Literal["negative", "neutral", "positive"]
    tags: list[str]
    rating: int
    addresses: list[Address]
    verified: bool


def test_json_schema_answer_validates(server: Server) -> None:
    """A json_schema answer validates against the schema; an enum holding the sentiment gets it."""
    schema = Extraction.model_json_schema()
    response_format = {"type": "json_schema", "json_schema": {"name": "extraction", "schema": schema}}
    content = server.ask(SENTIMENT, response_format=response_format)["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), schema)
    assert Extraction.model_validate_json(content).sentiment == "positive"


def test_schema_instances_respect_bounds() -> None:
    """Generated instances honour formats, lengths, bounds, item counts and recursion."""
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "minLength": 5, "maxLength": 6},
            "score": {"type": "number", "exclusiveMinimum": 3, "maximum": 9},
            "count": {"type": "integer", "minimum": 4},
            "pair": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
            "tree": {"$ref": "#/$defs/node"},
            "either": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
        },
        "required": ["when", "code", "score", "count", "pair", "tree", "either"],
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
    }
    instance = instance_from_schema(schema, "hi")
    jsonschema.validate(instance, schema)
    assert instance["either"] is True


def test_malformed_fields_are_invalid_argument(server: Server) -> None:
    """Fields of unexpected JSON types get Vertex's 400, never a 500."""
    schema = {"type": "array", "minItems": "two"}
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    for fields in ({"modalities": 5}, {"response_format": bad_schema}, {"n": "2"}):
        assert google_error(server.chat(**fields))["status"] == "INVALID_ARGUMENT"


def test_json_object_answer(server: Server) -> None:
    """json_object mode answers with a JSON object."""
    content = server.ask("hi", response_format={"type": "json_object"})["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)


def test_tool_calls_carry_a_thought_signature(server: Server) -> None:
    """Tools get one call per named place; the first call carries the thought_signature."""
    body = server.ask("What is the weather like in Boston and New Delhi today?", tools=[WEATHER_TOOL])
    choice = body["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"location": "Boston", "unit": "celsius"},
        {"location": "New Delhi", "unit": "celsius"},
    ]
    assert all(c["id"].startswith("function-call-") and c["type"] == "function" for c in calls)
    assert base64.b64decode(calls[0]["extra_content"]["google"]["thought_signature"])
    assert "extra_content" not in calls[1]


def test_tool_choice_none_and_named(server: Server) -> None:
    """tool_choice none answers text; a named unknown function is a 400."""
    text = server.ask("Weather in Rome?", tools=[WEATHER_TOOL], tool_choice="none")
    assert text["choices"][0]["message"]["content"].startswith("Simulated answer to:")
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert server.chat(tools=[WEATHER_TOOL], tool_choice=unknown).status == 400


def history(signature: bool) -> list[dict[str, Any]]:
    """The seed's multimodal function-response turn, with or without the thought_signature."""
    call: dict[str, Any] = {
        "function": {"arguments": '{"item_name":"green shirt"}', "name": "get_image"},
        "id": "function-call-a350228d-0283-4792-8bfa-40da064fb959",
        "type": "function",
    }
    if signature:
        call["extra_content"] = {"google": {"thought_signature": "c2ln"}}
    file = {
        "mime_type": "image/jpg",
        "display_name": "dress.jpg",
        "file_uri": "gs://cloud-samples-data/generative-ai/image/dress.jpg",
    }
    return [
        {"role": "user", "content": "Show me the green shirt I ordered last month."},
        {"role": "assistant", "tool_calls": [call]},
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": '{"image_ref":{"$ref":"dress.jpg"}}',
            "extra_content": {"google": {"parts": [{"file_data": file}]}},
        },
    ]


def test_tool_result_turn_is_answered_with_text(server: Server) -> None:
    """After a tool result the model answers text that quotes it and names the attached file."""
    reply = server.chat(model="google/gemini-3.1-pro-preview", messages=history(True), tools=[WEATHER_TOOL])
    content = reply.json()["choices"][0]["message"]["content"]
    assert "image_ref" in content and "dress.jpg (image/jpg, gs://" in content


def test_gemini3_refuses_history_without_thought_signature(server: Server) -> None:
    """Gemini 3 answers 400 when an earlier function call lost its signature; Gemini 2.5 does not."""
    missing = server.chat(model="google/gemini-3.1-pro-preview", messages=history(False))
    assert missing.status == 400 and "thought_signature" in google_error(missing)["message"]
    assert server.chat(model=MODEL, messages=history(False)).status == 200


def assemble(chunks: list[Any]) -> dict[str, Any]:
    """Rebuild content and tool calls from stream chunks, keying calls by id (indexes are unreliable)."""
    content, calls = "", dict[str, dict[str, str]]()
    for chunk in chunks:
        delta = chunk.choices[0].delta
        assert delta.role == "assistant"
        content += delta.content or ""
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.id, {"name": part.function.name, "arguments": ""})
            call["arguments"] += part.function.arguments
    return {"content": content or None, "tool_calls": list(calls.values())}


@pytest.mark.parametrize(
    "fields",
    [
        {
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "extra_body": {
                "extra_body": {"google": {"thinking_config": {"include_thoughts": True}, "thought_tag_marker": "think"}}
            },
        },
        {
            "messages": [{"role": "user", "content": "Weather in Boston and New Delhi?"}],
            "tools": [WEATHER_TOOL],
            "extra_body": {"extra_body": {"google": {"stream_function_call_arguments": True}}},
        },
    ],
    ids=["thoughts", "tool-arguments"],
)
def test_stream_assembles_to_the_non_streamed_answer(server: Server, fields: dict[str, Any]) -> None:
    """Streamed deltas add up to the non-streamed message; the last chunk alone has finish_reason and usage."""
    client = server.client()
    whole = client.chat.completions.create(model=MODEL, **fields)
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, **fields))
    message = whole.choices[0].message
    expected = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
    assert assemble(chunks) == {"content": message.content, "tool_calls": expected}
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].usage == whole.usage


def test_stream_wire_format(server: Server) -> None:
    """SSE lines are `data: {json}` chunks ending in `data: [DONE]`."""
    reply = server.chat(stream=True)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = reply.body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(json.loads(e.removeprefix("data: "))["object"] == "chat.completion.chunk" for e in events[:-2])


def test_image_generation_returns_png(server: Server) -> None:
    """modalities image puts a PNG in message.audio with its mime type, content null."""
    message = server.ask("Generate an image of a cat.", modalities=["image"])["choices"][0]["message"]
    png = base64.b64decode(message["audio"]["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    assert message["audio"]["extra_content"] == {"google": {"mime_type": "image/png"}}
    assert message["content"] is None and message["extra_content"]["google"]["thought_signature"]


def test_a_streamed_image_comes_in_pieces(server: Server) -> None:
    """A streamed image's base64 spreads over several chunks; the first carries the mime_type and signature."""
    whole = server.ask("Generate an image of a cat.", modalities=["image"])["choices"][0]["message"]
    reply = server.chat(
        messages=[{"role": "user", "content": "Generate an image of a cat."}], modalities=["image"], stream=True
    )
    deltas = [
        json.loads(e.removeprefix("data: "))["choices"][0]["delta"] for e in reply.body.decode().split("\n\n")[:-2]
    ]
    pieces = [d["audio"] for d in deltas if "audio" in d]
    assert len(pieces) > 1 and "".join(p["data"] for p in pieces) == whole["audio"]["data"]
    assert pieces[0]["extra_content"] == whole["audio"]["extra_content"] and "extra_content" not in pieces[1]
    assert deltas[0]["extra_content"] == whole["extra_content"]


@pytest.mark.parametrize(
    ("shape", "stream", "check"),
    [
        ("error_body", False, lambda b: b["error"]["code"] == 503),
        ("error_list_body", True, lambda b: b[0]["error"]["status"] == "UNAVAILABLE"),
        ("empty_choices", False, lambda b: b["choices"] == []),
        ("no_choices", False, lambda b: "choices" not in b and b["usage"]),
        ("bad_media", False, lambda b: b["choices"][0]["message"]["audio"]["data"] == "not*base64*data!"),
        ("json_for_stream", True, lambda b: b["object"] == "chat.completion"),
        ("stream_cut", False, lambda b: b["object"] == "chat.completion"),  # a stream shape: plain answers stay whole
    ],
)
def test_broken_json_shapes(server: Server, shape: str, stream: bool, check: Any) -> None:
    """`broken_answer` serves its shape as a 200 JSON body (also to a stream, where that is the shape)."""
    server.configure(broken_answer=shape, rate_broken=1.0, broken_status=503)
    reply = server.chat(stream=stream)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert check(reply.json())


@pytest.mark.parametrize(
    ("shape", "last"),
    [
        ("stream_cut", lambda e: "finish_reason" not in e["choices"][0]),
        ("stream_error", lambda e: e["error"]["code"] == 500),
        ("stream_error_list", lambda e: e[0]["error"]["status"] == "INTERNAL"),
    ],
)
def test_broken_stream_shapes(server: Server, shape: str, last: Any) -> None:
    """A broken stream ends without [DONE]: before its finish chunk, or with an error event after its first."""
    server.configure(broken_answer=shape, rate_broken=1.0)
    events = server.chat(stream=True).body.decode().split("\n\n")
    assert events[-1] == "" and "data: [DONE]" not in events
    assert last(json.loads(events[-2].removeprefix("data: ")))
    assert server.get("/_sim/stats")["broken"] == 1


def test_audio_generation_returns_wav(server: Server) -> None:
    """modalities audio returns a readable WAV."""
    message = server.ask("Say hi.", modalities=["audio"])["choices"][0]["message"]
    with wave.open(io.BytesIO(base64.b64decode(message["audio"]["data"]))) as sound:
        assert sound.getnframes() > 0


def test_cut_off_answers(server: Server) -> None:
    """max_tokens <= 2 drops message and completion_tokens; a larger limit cuts with finish_reason length."""
    tiny = server.ask("Tell me a long story", max_tokens=2)
    assert tiny["choices"] == [{"finish_reason": "length", "index": 0}]
    assert "completion_tokens" not in tiny["usage"] and tiny["usage"]["prompt_tokens"] > 0
    cut = server.ask("Tell me a long story", max_completion_tokens=3)["choices"][0]
    assert (cut["finish_reason"], len(cut["message"]["content"])) == ("length", 12)


def test_n_choices(server: Server) -> None:
    """n asks for several choices, indexed in order."""
    body = server.ask("hi", n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]


def test_media_parts_are_described_and_counted(server: Server) -> None:
    """Inline and gs:// media are described in the answer and add their token figures."""
    png = base64.b64encode(b"\x89PNG fake").decode()
    parts = [
        {"type": "text", "text": "Describe these"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        {"type": "input_audio", "input_audio": {"format": "audio/mp3", "data": "gs://b/pixel.mp3"}},
    ]
    body = server.ask(parts)
    content = body["choices"][0]["message"]["content"]
    assert "I received 1 image (image/png, 9 bytes) and 1 audio clip (audio/mp3, gs://b/pixel.mp3)." in content
    assert body["usage"]["prompt_tokens"] == 4 + 258 + 32
    bad = [{"type": "image_url", "image_url": "data:image/png;base64,@@@"}]
    assert server.chat(messages=[{"role": "user", "content": bad}]).status == 400


def test_answers_are_deterministic_and_counted(server: Server) -> None:
    """The same body gets the same answer; /_sim/counts counts sends per prompt."""
    first, second = (server.ask("Same prompt", reasoning_effort="medium") for _ in range(2))
    assert first["choices"] == second["choices"] and first["usage"] == second["usage"]
    assert server.get("/_sim/counts") == {"Same prompt": 2}


def test_record_keeps_bodies_but_no_credentials(server: Server) -> None:
    """record keeps each chat body and path; the Authorization header is never stored."""
    server.configure(record=True)
    server.chat(temperature=0)
    records = server.get("/_sim/requests")
    assert records == [
        {
            "path": CHAT,
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "temperature": 0},
        }
    ]
    assert server.token not in json.dumps(records)


def test_reset_zeroes_stats_and_counts(server: Server) -> None:
    """/_sim/reset zeroes counters, counts and records."""
    server.chat()
    server.post("/_sim/reset", {})
    assert server.get("/_sim/stats")["requests"] == 0 and server.get("/_sim/counts") == {}


def test_unknown_path_is_google_404(server: Server) -> None:
    """Unknown paths get Google's NOT_FOUND list body."""
    assert google_error(server.post("/v1/projects/p/nothing", {}))["status"] == "NOT_FOUND"


# --- configuration ----------------------------------------------------------------------------------------


def test_from_mapping_rejects_unknown_and_mistyped_settings() -> None:
    """Unknown keys name the closest valid one; wrong types name the field; ints widen to floats."""
    with pytest.raises(ValueError, match="did you mean 'rpm_quota'"):
        SimulatorConfig.from_mapping({"rpm_qouta": 5})
    with pytest.raises(ValueError, match="'require_auth' must be bool"):
        SimulatorConfig.from_mapping({"require_auth": "yes"})
    with pytest.raises(ValueError, match="unknown broken_answer 'cut'; valid: error_body"):
        SimulatorConfig.from_mapping({"broken_answer": "cut"})
    with pytest.raises(ValueError, match="broken_status must be one of"):
        SimulatorConfig.from_mapping({"broken_status": 418})
    config = SimulatorConfig.from_mapping({"latency_s": 1, "storm_for_s": 5}, now=100.0)
    assert (config.latency_s, config.storm_until) == (1.0, 105.0)


def test_config_endpoint_refuses_bad_settings(server: Server) -> None:
    """/_sim/config answers 400 for an unknown key and leaves the config unchanged."""
    reply = server.post("/_sim/config", {"rate_429": 1.0, "bogus": 1})
    assert reply.status == 400 and "bogus" in reply.json()["error"]
    assert server.chat().status == 200


def test_standalone_module_prints_its_url() -> None:
    """`python -m batchrun.simulator` prints one JSON line with its URL and stops on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "batchrun.simulator", "--rpm", "5", "--traffic-type", "PROVISIONED_THROUGHPUT"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"]
        config = fetch(url + "/_sim/config", data=b"{}", headers={"Content-Type": "application/json"}).json()
        assert (config["rpm_quota"], config["traffic_type"]) == (5, "PROVISIONED_THROUGHPUT")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
