"""The exception tree: user mistakes become one clear message, never a traceback.

BatchrunError                 anything the CLI prints as a message and maps to an exit code
├── SpecError                 the job spec is invalid (exit 2); names the YAML path and the fix
├── InputError                the input cannot be read at all (exit 2); names the file and line/row
├── CredentialsError          the endpoint's API key or Google credentials are missing or unusable (exit 2)
├── OutputError               rows changed and no --refresh/--keep (exit 2), or unwritable (exit 3)
├── StorageError              Cloud Storage: no such bucket, access refused (exit 2), unreachable (exit 3)
└── StoppedError              the run stopped early with every finished row saved (exit 3)

RequestError                  one request failed; carried into an `error` row, never raised to the CLI
├── RetryableError            429, 5xx, timeouts, dropped connections: retried with backoff
│   ├── RateLimitedError      429 specifically: also slows the pool down
│   ├── MalformedResponseError  a 200 that is not a whole answer (not JSON, an error body, no choices)
│   └── StreamCutError        a stream that ended before its finish chunk
├── AuthExpiredError          401: the token is refreshed and the request sent again
├── FinalError                400/403/404 and other refusals: never retried
└── AnswerError               an answer arrived but is not a whole one; the error row keeps its text and usage
    ├── InvalidOutputError    the answer did not parse or match the schema: asked again (on_invalid_output)
    │   └── EmptyAnswerError  finished, yet no text, tool call or media: asked again likewise
    └── FilteredError         withheld (finish_reason content_filter, safety, ...): final

RowInputError                 one row cannot become a request (missing value, unreadable media): an `input` row
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INVALID = 2
EXIT_STOPPED = 3


class BatchrunError(Exception):
    """A failure the user can act on; the CLI prints `message` and exits with `exit_code`."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(BatchrunError):
    """The job spec is invalid."""


class InputError(BatchrunError):
    """The input file cannot be read at all."""


class CredentialsError(BatchrunError):
    """The environment lacks the credentials the endpoint needs (an API key variable, a Google key file)."""


class OutputError(BatchrunError):
    """The output is refused (rows changed, no id in common with the input) or cannot be written (full, read-only).

    An unwritable output stops the run like a signal does (exit 3): the spec is fine, every row saved
    so far stays, and the same command resumes once the disk or the permissions are fixed.
    """

    def __init__(self, message: str, *, unwritable: bool = False) -> None:
        super().__init__(message)
        self.exit_code = EXIT_STOPPED if unwritable else EXIT_INVALID


class StorageError(BatchrunError):
    """Cloud Storage said no (a missing bucket, refused access) or could not be reached; names the bucket and cause.

    Unreachable storage stops the run like a signal does (exit 3): run again once it answers.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.exit_code = EXIT_STOPPED if transient else EXIT_INVALID


class StoppedError(BatchrunError):
    """The run stopped before the end; all finished rows are saved."""

    exit_code = EXIT_STOPPED


class RowInputError(Exception):
    """This row cannot become a request; it gets an `input` error row and the run goes on."""


class RequestError(Exception):
    """One request failed; becomes an `error` row unless retried to success."""

    error_type = "request"

    def __init__(self, message: str, *, http_status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        self.attempts = 0


class RetryableError(RequestError):
    """A transient failure: 5xx, timeout, dropped connection."""

    error_type = "transient"


class RateLimitedError(RetryableError):
    """429: the endpoint or its shared pool is busy."""

    error_type = "rate_limited"


class MalformedResponseError(RetryableError):
    """A 200 whose body is not a whole chat.completion: saving it would make an ok row of nulls."""

    error_type = "malformed_response"


class StreamCutError(RetryableError):
    """A stream that ended before its finish chunk: what arrived is part of an answer."""

    error_type = "stream_cut"


class AuthExpiredError(RequestError):
    """401: the access token was rejected; refresh and send again."""

    error_type = "auth"


class FinalError(RequestError):
    """The endpoint refused the request for good."""

    error_type = "http"


class AnswerError(RequestError):
    """An answer arrived but cannot be an ok row; `raw` keeps it, so the error row shows its text and usage."""

    def __init__(self, message: str, *, raw: dict[str, object]) -> None:
        super().__init__(message)
        self.raw = raw


class InvalidOutputError(AnswerError):
    """The answer did not parse as JSON or did not match the schema."""

    error_type = "invalid_output"


class EmptyAnswerError(InvalidOutputError):
    """The answer finished (not cut off by max_tokens) with no text, tool call or media: an ok row would hold
    nothing, and the same prompt usually answers on a second try."""

    error_type = "empty_answer"


class FilteredError(AnswerError):
    """The endpoint withheld the answer (safety, recitation, a blocklist): not retried, since the same
    prompt is refused again; the error row keeps the finish_reason and the tokens billed."""

    error_type = "content_filter"


def error_of(body: object) -> dict[str, object] | None:
    """The error object of an OpenAI body `{"error": {...}}` or a Google list body `[{"error": {...}}]`."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def server_message(body: object) -> str | None:
    """What an error body says, Google's status name first: `INVALID_ARGUMENT: ...`."""
    error = error_of(body) or (body if isinstance(body, dict) else None)
    if error and error.get("message"):
        status = error.get("status")
        return f"{status}: {error['message']}" if status else str(error["message"])
    return None
