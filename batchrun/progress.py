"""Run figures: a live display on stderr when stderr is a terminal, JSON log lines everywhere else.

stdout is never written during a run, so `batchrun run job.yaml | tee log` and `> file` stay clean.
"""

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
    cut_off: int = 0  # ok rows whose answer stopped at max_tokens (finish_reason length)
    errors: int = 0
    requests: int = 0
    rate_limited: int = 0
    tokens: int = 0
    limit: int | None = None  # --limit: the run sends at most this many of the pending rows
    cost: float | None = None  # what this run's answers cost so far, when their traffic types are priced
    currency: str = "USD"
    started: float = field(default_factory=time.monotonic)
    _history: deque[tuple[float, int, int]] = field(default_factory=deque)

    def to_send(self) -> int:
        """Rows this run still means to send: the pending rows, or what --limit leaves of them."""
        pending = max(self.total - self.already_done, 0)
        target = pending if self.limit is None else min(self.limit, pending)
        return max(target - self.done, 0)

    def left_after(self) -> int:
        """Pending rows that --limit leaves for a later run (0 without --limit)."""
        pending = max(self.total - self.already_done, 0)
        return 0 if self.limit is None else max(pending - self.limit, 0)

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
        remaining = self.to_send()
        return {
            "rows_done": finished,
            "rows_total": self.total,
            "ok": self.ok,
            "errors": self.errors,
            "requests_per_min": round((self.requests - requests_then) / span * 60, 1),
            "tokens_per_min": round((self.tokens - tokens_then) / span * 60, 1),
            "rate_limited_429": self.rate_limited,
            "eta_s": round(remaining / rate, 1) if rate > 0 else None,
            "elapsed_s": round(elapsed, 1),
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
    """Shows progress until stopped, then a summary: a live display on a TTY, a JSON line per interval otherwise."""

    def __init__(
        self,
        counters: Counters,
        job: str,
        *,
        interactive: bool,
        interval_s: float = 10.0,
        labels: dict[str, Any] | None = None,
        output: str = "",
    ) -> None:
        self._counters = counters
        self._job = job
        self._interactive = interactive
        self._interval = interval_s
        self._labels = {"job": job, **(labels or {})}
        self._output = output
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
        self._task = asyncio.get_running_loop().create_task(self._live() if self._interactive else self._lines())

    async def stop(self, outcome: str = "finished") -> None:
        """Stop reporting and print the summary, saying whether the run finished or stopped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        figures, lines = self.summary(outcome, short_name=self._interactive)
        if self._interactive:
            sys.stderr.write("\n".join(redact(line) for line in lines) + "\n")
            sys.stderr.flush()
        else:
            log_event("INFO" if outcome == "finished" else "WARNING", "; ".join(lines), **self._labels, **figures)

    def summary(self, outcome: str, *, short_name: bool = False) -> tuple[dict[str, Any], list[str]]:
        """The run's closing figures and the short lines that say them (within 80 columns with `short_name`)."""
        c = self._counters
        figures = c.figures()
        elapsed = figures["elapsed_s"]
        rate = c.done / elapsed if elapsed > 0 else 0.0
        figures.update(
            rows_per_s=round(rate, 2),
            tokens=c.tokens,
            ok_cut_off=c.cut_off,
            output=self._output,
            rows_left_by_limit=c.left_after(),
        )
        lines = [
            f"{_shortened(self._job) if short_name else self._job}: {outcome} after {_clock(elapsed)}, "
            f"{figures['rows_done']:,}/{figures['rows_total']:,} rows done",
            f"this run: {c.ok:,} ok, {c.errors:,} error, {c.tokens:,} tokens, {rate:,.1f} rows/s",
        ]
        if c.cost is not None:
            lines[-1] += f", {c.cost:,.4f} {c.currency}"
        if c.cut_off:
            lines.append(f"{c.cut_off:,} ok rows hit max_tokens (finish_reason length): answers may be cut")
        if c.left_after() and outcome == "finished":
            lines.append(f"--limit {c.limit}: {c.left_after():,} rows remain; run again without --limit to finish")
        if self._output:
            lines.append(f"output: {self._output}")
        return figures, lines

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

    async def _live(self) -> None:
        """The live display on stderr (the stream that was found to be a terminal), redrawn twice a second."""
        from rich.console import Console
        from rich.live import Live

        console = Console(stderr=True)
        with Live(self._frame(console.width), console=console, auto_refresh=False, transient=True) as live:
            while True:
                live.update(self._frame(console.width), refresh=True)
                await asyncio.sleep(0.5)

    def _frame(self, width: int) -> Any:
        """Two lines that fit `width` columns: name, bar and counts; then elapsed, ETA, rates and errors."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        c = self._counters
        f = c.figures()
        count = f"{f['rows_done']:,}/{f['rows_total']:,}"
        name = _shortened(self._job)
        bar_width = max(width - len(name) - len(count) - 3, 5)
        top = Table.grid(padding=(0, 1))
        top.add_row(
            Text(name, style="bold"),
            ProgressBar(total=max(f["rows_total"], 1), completed=f["rows_done"], width=bar_width),
            count,
        )
        eta = "--:--" if f["eta_s"] is None else _clock(f["eta_s"])
        figures = (
            f"elapsed {_clock(f['elapsed_s'])}  eta {eta}  {f['requests_per_min']:,.0f} req/min  "
            f"{f['tokens_per_min']:,.0f} tok/min  errors {f['errors']:,}  429s {f['rate_limited_429']:,}"
            + ("" if f["cost"] is None else f"  {f['cost']:,.4f} {f['currency']}")
        )
        lines: list[Any] = [top, Text(figures, no_wrap=True, overflow="ellipsis")]
        if c.limit is not None:
            note = f"--limit {c.limit}: the eta covers this run's rows; {c.left_after():,} more remain after it"
            lines.append(Text(note, no_wrap=True, overflow="ellipsis"))
        return Group(*lines)


def _shortened(name: str, width: int = 24) -> str:
    """A job name cut to `width` characters, so the screen's lines fit 80 columns."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS (M:SS under an hour)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
