"""The exception tree: user mistakes become one clear message, never a traceback.

    BatchrunError                 anything the CLI prints as a message and maps to an exit code
    ├── SpecError                 the job spec is invalid (exit 2); names the YAML path and the fix
    ├── InputError                the input cannot be read at all (exit 2); names the file and line/row
    ├── OutputError               rows changed and no --refresh/--keep (exit 2), or unwritable (exit 3)
    └── StoppedError              the run stopped early with every finished row saved (exit 3)

    RequestError                  one request failed; carried into an `error` row, never raised to the CLI
    ├── RetryableError            429, 5xx, timeouts, dropped connections: retried with backoff
    │   └── RateLimitedError      429 specifically: also slows the pool down
    ├── AuthExpiredError          401: the token is refreshed and the request sent again
    ├── FinalError                400/403/404 and other refusals: never retried
    └── InvalidOutputError        the answer did not parse or match the schema

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


class OutputError(BatchrunError):
    """The output is refused (rows changed, no id in common with the input) or cannot be written (full, read-only).

    An unwritable output stops the run like a signal does (exit 3): the spec is fine, every row saved
    so far stays, and the same command resumes once the disk or the permissions are fixed.
    """

    def __init__(self, message: str, *, unwritable: bool = False) -> None:
        super().__init__(message)
        self.exit_code = EXIT_STOPPED if unwritable else EXIT_INVALID


class StoppedError(BatchrunError):
    """The run stopped before the end; all finished rows are saved."""

    exit_code = EXIT_STOPPED


class RowInputError(Exception):
    """This row cannot become a request; it gets an `input` error row and the run goes on."""


class RequestError(Exception):
    """One request failed; becomes an `error` row unless retried to success."""

    error_type = "request"

    def __init__(
        self, message: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
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


class AuthExpiredError(RequestError):
    """401: the access token was rejected; refresh and send again."""

    error_type = "auth"


class FinalError(RequestError):
    """The endpoint refused the request for good."""

    error_type = "http"


class InvalidOutputError(RequestError):
    """The answer did not parse as JSON or did not match the schema."""

    error_type = "invalid_output"

    def __init__(self, message: str, *, raw: dict[str, object]) -> None:
        super().__init__(message)
        self.raw = raw
