"""Run figures, shown as a rich progress bar on a terminal and as JSON log lines everywhere else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from batchrun.redact import redact


@dataclass
class Counters:
    """Live counts the pool updates and the reporters read; one event loop, so no locks."""

    total: int = 0
    already_done: int = 0
    done: int = 0
    ok: int = 0
    errors: int = 0
    requests: int = 0
    rate_limited: int = 0
    tokens: int = 0
    cost: float | None = None  # what this run's answers cost so far, when their traffic types are priced
    currency: str = "USD"
    started: float = field(default_factory=time.monotonic)
    _history: deque[tuple[float, int, int]] = field(default_factory=deque)

    def figures(self) -> dict[str, Any]:
        """The figures every report shows: rows done/total, req/min, tokens/min, errors, 429s, ETA."""
        now = time.monotonic()
        self._history.append((now, self.requests, self.tokens))
        while len(self._history) > 2 and self._history[0][0] < now - 60:
            self._history.popleft()
        then, requests_then, tokens_then = self._history[0]
        span = max(now - then, 1e-9)
        elapsed = max(now - self.started, 1e-9)
        if span < 1.0:
            span, requests_then, tokens_then = elapsed, 0, 0
        finished = self.already_done + self.done
        rate = self.done / elapsed
        remaining = max(self.total - finished, 0)
        return {
            "rows_done": finished,
            "rows_total": self.total,
            "ok": self.ok,
            "errors": self.errors,
            "requests_per_min": round((self.requests - requests_then) / span * 60, 1),
            "tokens_per_min": round((self.tokens - tokens_then) / span * 60, 1),
            "rate_limited_429": self.rate_limited,
            "eta_s": round(remaining / rate, 1) if rate > 0 else None,
            "cost": None if self.cost is None else round(self.cost, 6),
            "currency": self.currency,
        }


def log_event(severity: str, message: str, stream: TextIO | None = None, **fields: Any) -> None:
    """One JSON object per line, as Cloud Logging reads it (`severity`, `message`, then the fields).

    Every string, the fields' included, passes through `redact`, so no token or key reaches a log.
    """
    record = {"severity": severity, "message": redact(message), **_scrubbed(fields)}
    out = stream or sys.stderr
    out.write(json.dumps(record, default=str) + "\n")
    out.flush()


class _JsonLogHandler(logging.Handler):
    """Library log records (gcsfs, google-auth, asyncio) as JSON lines too: nothing off a terminal is unstructured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"{record.name}: {record.getMessage()}"
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            log_event(record.levelname, message)
        except Exception:
            self.handleError(record)


def structured_logging() -> None:
    """Route Python logging and warnings (WARNING and above) through `log_event`, for Cloud Logging."""
    root = logging.getLogger()
    root.handlers[:] = [_JsonLogHandler(logging.WARNING)]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)  # re-install even if an earlier call's hook was since replaced
    logging.captureWarnings(True)


def _scrubbed(value: Any) -> Any:
    """The value with `redact` applied to every string inside it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


class Reporter:
    """Shows progress until stopped: a rich bar on a TTY, a JSON line per interval otherwise."""

    def __init__(
        self,
        counters: Counters,
        job: str,
        *,
        interactive: bool,
        interval_s: float = 10.0,
        labels: dict[str, Any] | None = None,
    ) -> None:
        self._counters = counters
        self._job = job
        self._interactive = interactive
        self._interval = interval_s
        self._labels = {"job": job, **(labels or {})}
        self._task: asyncio.Task[None] | None = None

    def note(self, severity: str, message: str, **fields: Any) -> None:
        """One event: a plain line on a terminal, a JSON log line (with the task's labels) elsewhere."""
        if self._interactive:
            sys.stderr.write(redact(message) + "\n")
            sys.stderr.flush()
        else:
            log_event(severity, message, **self._labels, **fields)

    def start(self) -> None:
        """Begin reporting in the background."""
        self._task = asyncio.get_running_loop().create_task(
            self._bar() if self._interactive else self._lines()
        )

    async def stop(self, outcome: str = "finished") -> None:
        """Stop reporting and print the final figures, saying whether the run finished or stopped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self._interactive:
            figures = self._counters.figures()
            message = f"{self._job}: {outcome}, {figures['rows_done']}/{figures['rows_total']} rows"
            log_event("INFO" if outcome == "finished" else "WARNING", message, **self._labels, **figures)

    async def _lines(self) -> None:
        """A JSON log line every interval."""
        while True:
            await asyncio.sleep(self._interval)
            figures = self._counters.figures()
            log_event(
                "INFO",
                f"{self._job}: {figures['rows_done']}/{figures['rows_total']} rows",
                **self._labels,
                **figures,
            )

    async def _bar(self) -> None:
        """A rich progress bar with the figures beside it, redrawn twice a second."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        task = progress.add_task(self._job, total=self._counters.total, detail="")
        with progress:
            try:
                while True:
                    self._draw(progress, task)
                    await asyncio.sleep(0.5)
            finally:
                self._draw(progress, task)

    def _draw(self, progress: Any, task: Any) -> None:
        """Update the bar from the counters."""
        f = self._counters.figures()
        detail = (
            f"{f['requests_per_min']:.0f} req/min  {f['tokens_per_min']:.0f} tok/min  "
            f"errors {f['errors']}  429s {f['rate_limited_429']}"
            + ("" if f["cost"] is None else f"  cost {f['cost']:.4f} {f['currency']}")
        )
        progress.update(task, completed=f["rows_done"], detail=detail)
