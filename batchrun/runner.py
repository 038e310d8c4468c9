"""The pool: source -> limits -> client -> results -> sink, with signals, shards and resume.

One producer streams pending rows into a bounded queue; `concurrency` workers send them; the one
writer commits finished rows. A signal stops the producer, gives in-flight requests a short grace,
then saves every finished row.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from batchrun.collector import PacedCollector
from batchrun.errors import InputError, RequestError, SpecError, StoppedError
from batchrun.limits import Limits
from batchrun.progress import Counters, Reporter
from batchrun.prompts import Renderer, RowInputError
from batchrun.rerun import RequestHasher, compare, decide, job_record, keep_key
from batchrun.results import ResultBuilder, Row, input_error
from batchrun.saved import SavedIds
from batchrun.schema import output_schema
from batchrun.shards import Shard
from batchrun.sink import OutputWriter, PartWriter
from batchrun.sources import InputSummary, Record, Source, coerce_kept
from batchrun.spec import JobSpec

if TYPE_CHECKING:
    from batchrun.client import ChatClient

# What the producer hands the workers: a row with its request body, or with None when the worker renders it
# (media files to read, in a thread); None alone tells a worker to stop.
RowQueue = asyncio.Queue[tuple[Record, dict[str, Any] | None] | None]

_FATAL_STATUSES = {401, 403, 404}
_FATAL_AFTER = 10


@dataclass(frozen=True)
class RunOptions:
    """What the command line adds to the spec for one run."""

    limit: int | None = None
    retry_errors: bool = False
    refresh: bool = False
    keep: bool = False
    shard: Shard = field(default_factory=Shard)
    attempt: int = 0
    interactive: bool = False
    grace_s: float = 5.0
    log_interval_s: float = 10.0


@dataclass(frozen=True)
class Prepared:
    """A validated job: its input summary and the renderer, checked against the first rows."""

    spec: JobSpec
    source: Source
    summary: InputSummary
    renderer: Renderer
    first_request: dict[str, Any] | None


def prepare(spec: JobSpec, shard: Shard | None = None) -> Prepared:
    """Validate the spec against the input and render its first rows; sends nothing."""
    source = Source(spec.input)
    summary = source.summarize(spec.output.keep_columns, shard.owns if shard else None)
    if summary.rows == summary.broken:
        raise InputError(f"{spec.input.path}: no line or row could be read; check the file format")
    renderer = Renderer(spec, summary.format)
    renderer.check_columns(summary.columns, spec.input.path)
    first: dict[str, Any] | None = None
    checked = 0
    for batch in source.batches(size=64, columns=renderer.columns_needed()):
        for record in batch:
            if record.data is None:
                continue
            try:
                body = renderer.render(record)
            except RowInputError:
                continue
            first = first or body
            checked += 1
        if checked >= 5 or first is not None:
            break
    if first is None and summary.rows > summary.broken:
        raise SpecError(
            f"none of the first rows of {spec.input.path} renders into a request: "
            "check request.prompt placeholders against the input's columns"
        )
    return Prepared(spec, source, summary, renderer, first)


class Runner:
    """One run of one shard of a job."""

    def __init__(self, prepared: Prepared, options: RunOptions) -> None:
        self.prepared = prepared
        self.spec = prepared.spec
        self.options = options
        self.counters = Counters()
        self.builder = ResultBuilder(
            thought_marker=self.spec.request.google.get("thought_tag_marker"),
            response_format=self.spec.request.params.get("response_format"),
        )
        self._line_builders: dict[str, ResultBuilder] = {}
        keep = [pa.field(name, prepared.summary.types.get(name, pa.string())) for name in self.spec.output.keep_columns]
        self.keep_types = {f.name: f.type for f in keep}
        self.schema = output_schema(keep)
        self.output = OutputWriter(self.spec.output.path, options.shard)
        self.hasher = RequestHasher(self.spec, prepared.renderer)
        self.reporter = Reporter(
            self.counters,
            self.spec.name,
            interactive=options.interactive,
            interval_s=options.log_interval_s,
            labels={"shard": options.shard.label, "attempt": options.attempt},
        )
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._stop_reason: str | None = None
        self._held: list[Row] = []
        self._successes = 0

    async def run(self) -> int:
        """Run to completion or to a stop; returns the exit code."""
        with self.output.lock():
            return await self._run()

    async def _run(self) -> int:
        """The run itself, with this shard of the output held."""
        output, options = self.output, self.options
        output.prepare()
        done = self._plan(output)
        reporter = self.reporter
        counters = self.counters
        counters.total = self.prepared.summary.owned
        counters.already_done = len(done)
        if not options.interactive or options.attempt > 0:
            reporter.note(
                "INFO",
                f"{self.spec.name}: shard {options.shard.label} attempt {options.attempt}: "
                f"{counters.total} rows, {counters.already_done} already saved, "
                f"{counters.total - counters.already_done} to send",
                rows_total=counters.total,
                rows_saved=counters.already_done,
            )
        writer = PartWriter(
            output, self.schema, flush_rows=self.spec.output.flush_rows, flush_seconds=self.spec.output.flush_seconds
        )
        self._install_signals()
        from batchrun.client import ChatClient  # HTTP and auth are imported only by a run, not by validate
        from batchrun.endpoints import connect

        with connect(self.spec.endpoint) as connection:
            limits = Limits(self.spec.limits, share=options.shard.share)
            client = ChatClient(connection, self.spec.retry, limits, counters,
                                concurrency=self.spec.limits.concurrency,
                                direct=self.spec.endpoint.transport == "direct")
            writer.start()
            reporter.start()
            with PacedCollector():
                try:
                    limited = await self._pool(client, writer, done)
                finally:
                    self._release_held(writer)
                    await writer.close()
                    await reporter.stop("finished" if self._stop_reason is None else "stopped")
                    await client.close()
        return await self._exit_code(writer, limited)

    def _plan(self, output: OutputWriter) -> SavedIds:
        """Compare the saved rows with the input row by row, refuse or record the job, drop the gone rows, and
        mark the rows to send again; returns the saved ids this run skips."""
        options = self.options
        comparison = compare(self.spec, output.saved, options.shard)
        recorded = output.saved.meta()
        record = job_record(self.spec, self.prepared.summary.identity)
        kept_before = recorded is not None and recorded.get("kept") == keep_key(record)
        plan = decide(comparison, self.spec, refresh=options.refresh, keep=options.keep,
                      retry_errors=options.retry_errors, recorded=recorded, kept_before=kept_before,
                      rewritable=output.may_rewrite)
        if options.keep or kept_before:
            record["kept"] = keep_key(record)
        output.record_job(record)
        output.drop(plan.gone, comparison.parts)
        output.replace_rows(plan.replace, comparison.parts)
        for note in plan.notes:
            self.reporter.note("INFO", note)
        if options.retry_errors:
            retried = plan.replace.join(comparison.rows.filter(pl.col("status") == "error"), on="id").height
            self.reporter.note("INFO", f"--retry-errors: {retried} error rows will be sent again")
        if plan.left:
            self.reporter.note("WARNING", f"{plan.left} rows of this shard to send again are in parts written by a "
                               "job with another task count and stay; run the same command as one task (no --shard, "
                               "no CLOUD_RUN_TASK_COUNT) to send them again")
        return plan.skip

    async def _exit_code(self, writer: PartWriter, limited: bool) -> int:
        """0 when every row has a final result (or --limit was reached), else raise the reason to stop."""
        if writer.failure is not None:
            raise writer.failure
        if self._stop_reason is not None:
            raise StoppedError(
                f"{self._stop_reason}; {writer.rows_written} rows saved this run, "
                f"{self.counters.total - self.counters.already_done - self.counters.done} pending. "
                "Run the same command again to resume"
            )
        if limited:
            self.reporter.note(
                "INFO", f"--limit reached: {writer.rows_written} rows saved; run again without --limit to finish"
            )
            return 0
        await asyncio.to_thread(self._verify_complete)  # reads every part: off the loop
        return 0

    def _verify_complete(self) -> None:
        """Read back which ids are saved: exit 0 only when every row of this shard is on disk."""
        missing = self.prepared.summary.owned - self.output.saved.count_ids(self.options.shard.owned)
        if missing > 0:
            raise StoppedError(
                f"{missing} rows of this run have no saved result in {self.output.path}; "
                "run the same command again to send them"
            )

    def _install_signals(self) -> None:
        """SIGTERM/SIGINT: stop taking rows; a second signal also cuts the grace period short."""
        loop = asyncio.get_running_loop()

        def stop(signame: str) -> None:
            if self._stopping.is_set():
                self._hurry.set()
            self.stop(f"stopped by {signame}")

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signal.Signals(signum).name)

    def stop(self, reason: str) -> None:
        """Stop dispatching new rows; in-flight ones get the grace period."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self.reporter.note("WARNING", f"{self.spec.name}: {reason}; saving finished rows")
        self._stopping.set()

    async def _pool(self, client: ChatClient, writer: PartWriter, done: SavedIds) -> bool:
        """Feed the workers and wait for them; returns True when --limit cut the run short."""
        concurrency = self.spec.limits.concurrency
        queue: RowQueue = asyncio.Queue(maxsize=min(concurrency * 2, 256))
        workers = [asyncio.create_task(self._worker(queue, client, writer)) for _ in range(concurrency)]
        producer = asyncio.create_task(self._produce(queue, writer, done, client))
        stop_wait = asyncio.create_task(self._stopping.wait())
        closer: asyncio.Task[None] | None = None
        limited = False
        try:
            await asyncio.wait([producer, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            if producer.done():
                limited = producer.result()
                closer = asyncio.create_task(_close(queue, len(workers)))
                all_done: asyncio.Future[Any] = asyncio.gather(*workers)
                waiting: list[asyncio.Future[Any]] = [all_done, stop_wait]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if all_done.done():
                    all_done.result()
            if self._stopping.is_set():
                producer.cancel()
                in_flight: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
                hurry = asyncio.create_task(self._hurry.wait())
                await asyncio.wait([in_flight, hurry], timeout=self.options.grace_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                hurry.cancel()
        finally:
            for task in [*workers, producer, stop_wait, *([closer] if closer else [])]:
                task.cancel()
            await asyncio.gather(*workers, producer, stop_wait, return_exceptions=True)
        return limited

    async def _produce(
        self, queue: RowQueue, writer: PartWriter, done: SavedIds, client: ChatClient
    ) -> bool:
        """Stream pending rows of this shard into the queue; rows that cannot render become input errors."""
        await client.first_token()
        owns = self.options.shard.owns
        limit = self.options.limit
        render_here = not self.spec.request.media  # media files are read by the workers, in threads, side by side
        sent = 0
        columns = self.prepared.renderer.columns_needed()
        for batch in self.prepared.source.batches(columns=columns):
            skip = done.contains([r.id for r in batch])
            for record, already in zip(batch, skip, strict=True):
                if already or not owns(record.id):
                    continue
                if limit is not None and sent >= limit:
                    return True
                sent += 1
                if record.data is None:
                    self._finish(writer, input_error(record.id, record.error or "unreadable row"), record)
                    continue
                body = None
                if render_here:
                    try:
                        body = self.prepared.renderer.render(record)
                    except RowInputError as exc:
                        self._finish(writer, self._unrenderable(record, exc), record)
                        continue
                await queue.put((record, body))
                await asyncio.sleep(0)  # one woken worker at a time: 2,000 starting at once would stall the loop
        return False

    async def _worker(
        self, queue: RowQueue, client: ChatClient, writer: PartWriter
    ) -> None:
        """Take rows until told to stop; each becomes exactly one row for the writer."""
        while not self._stopping.is_set():
            item = await queue.get()
            if item is None:
                client.wind_down()
                return
            if self._stopping.is_set():
                return
            record, body = item
            if body is None:
                try:
                    body = await asyncio.to_thread(self.prepared.renderer.render, record)
                except RowInputError as exc:
                    self._finish(writer, self._unrenderable(record, exc), record)
                    continue
            row = await self._send(client, record, body)
            self._finish(writer, row, record)

    def _unrenderable(self, record: Record, exc: RowInputError) -> Row:
        """The input error row of a row that renders into no request, naming its file and line."""
        where = f"{self.prepared.source.path}:{self.prepared.source.where} {record.line}"
        return input_error(record.id, f"{where}: {exc}")

    async def _send(self, client: ChatClient, record: Record, body: dict[str, Any]) -> Row:
        """One row's request, retried by the client, as an ok or error row."""
        builder = self._builder_for(body)
        check = builder.check if builder.wants_json else None
        estimate = _estimate(body) if client.needs_estimate else 0
        try:
            answer = await client.complete(body, estimate, check)
        except RequestError as exc:
            row = builder.failed(record.id, exc, attempts=exc.attempts)
        else:
            self._successes += 1
            self.counters.tokens += int((answer.response.get("usage") or {}).get("total_tokens") or 0)
            row = builder.ok(record.id, answer.response, attempts=answer.attempts,
                             latency_ms=answer.latency_ms, ttft_ms=answer.ttft_ms)
        row["request_hash"] = self.hasher.of_sent(record, body)
        return row

    def _builder_for(self, body: dict[str, Any]) -> ResultBuilder:
        """The spec's result builder, or one for an OpenAI Batch line's own response_format (checked when rendered)."""
        line_format = body.get("response_format")
        spec_format = self.spec.request.params.get("response_format")
        if self.prepared.summary.format != "openai-batch" or line_format == spec_format:
            return self.builder
        key = json.dumps(line_format, sort_keys=True)
        if key not in self._line_builders:
            self._line_builders[key] = ResultBuilder(
                thought_marker=self.spec.request.google.get("thought_tag_marker"), response_format=line_format
            )
        return self._line_builders[key]

    def _finish(self, writer: PartWriter, row: Row, record: Record) -> None:
        """Count a finished row and hand it to the writer (held back while the endpoint looks broken)."""
        if "request_hash" not in row:
            row["request_hash"] = self.hasher.of_record(record)  # a row that makes no request: its reason
        if record.data is not None:
            for name, type_ in self.keep_types.items():
                row[name] = coerce_kept(record.data.get(name), type_)
        if self._is_fatal_symptom(row):
            self._held.append(row)
            if len(self._held) >= _FATAL_AFTER:
                self.stop(f"the endpoint refused the first {len(self._held)} requests "
                          f"({row.get('error_message')}); check the model name, project and permissions")
            return
        self._release_held(writer)
        self.counters.done += 1
        if row["status"] == "ok":
            self.counters.ok += 1
        else:
            self.counters.errors += 1
        try:
            writer.add(row)
        except Exception as exc:
            self.stop(str(exc))

    def _is_fatal_symptom(self, row: Row) -> bool:
        """A 401/403/404 before any success: possibly a wrong model or project, not a bad row."""
        return (
            self._successes == 0
            and row["status"] == "error"
            and row.get("http_status") in _FATAL_STATUSES
            and self._stop_reason is None
        )

    def _release_held(self, writer: PartWriter) -> None:
        """Write held-back rows once the endpoint proved healthy or the run ends without a fatal stop."""
        if not self._held or (self._stop_reason is not None and len(self._held) >= _FATAL_AFTER):
            return
        held, self._held = self._held, []
        for row in held:
            self.counters.done += 1
            self.counters.errors += 1
            writer.add(row)


async def _close(queue: RowQueue, workers: int) -> None:
    """One end-of-work marker per worker, queued behind the last rows."""
    for _ in range(workers):
        await queue.put(None)


def _estimate(body: dict[str, Any]) -> int:
    """Tokens a request may use before it is sent: ~4 characters a token, plus the answer budget."""
    text = json.dumps(body.get("messages", []), ensure_ascii=False)
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    return len(text) // 4 + int(budget)


def run_job(spec: JobSpec, options: RunOptions) -> int:
    """Validate, then run the job; the exit code follows design.md section 2."""
    # pyarrow's default pool (mimalloc) keeps freed segments; a run allocates and frees input batches
    # and output parts all along, and the system allocator gives them back: 40 MB less at peak.
    pa.set_memory_pool(pa.system_memory_pool())
    prepared = prepare(spec, options.shard)
    return asyncio.run(Runner(prepared, options).run())

