"""The pool: source -> limits -> client -> results -> sink, with signals, shards and resume.

One producer streams pending rows into a bounded queue; `concurrency` workers send them; the one
writer commits finished rows. A signal stops the producer, gives in-flight requests a short grace,
then saves every finished row.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchrun.collector import PacedCollector, map_large_blocks
from batchrun.errors import BatchrunError, OutputError, RequestError, StoppedError
from batchrun.health import EndpointHealth
from batchrun.ids import SavedIds
from batchrun.limits import CapReached, CostCap, Limits
from batchrun.prepare import Prepared, prepare
from batchrun.prices import PriceBook, may_serve, row_usage
from batchrun.progress import Counters, Reporter
from batchrun.prompts import RowInputError
from batchrun.rerun import RequestHasher, job_record, keep_key, kept_for
from batchrun.results import ResultBuilder, input_error
from batchrun.schema import KeptColumns, ResultRow, output_schema
from batchrun.shards import Shard
from batchrun.sink import OutputWriter, PartWriter
from batchrun.sources import Record
from batchrun.spec import JobSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchrun.client import ChatClient

# What the producer hands the workers: an input record with its request body, or with None when the worker renders it
# (media files to read, in a thread); None alone tells a worker to stop.
RecordQueue = asyncio.Queue[tuple[Record, dict[str, Any] | None] | None]


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


class Runner:
    """One run of one shard of a job."""

    def __init__(self, prepared: Prepared, options: RunOptions) -> None:
        self.prepared = prepared
        self.spec = prepared.spec
        self.options = options
        self.counters = Counters()
        self.builder = ResultBuilder(
            thought_marker=self.spec.request.google_options.get("thought_tag_marker"),
            response_format=self.spec.request.params.get("response_format"),
        )
        self._line_builders: dict[str, ResultBuilder] = {}
        self.kept = KeptColumns(self.spec.output.keep_columns, prepared.summary.types)
        self.schema = output_schema(self.kept.fields)
        self.output = OutputWriter(self.spec.output.path, options.shard)
        self.hasher = RequestHasher(self.spec, prepared.renderer)
        self.reporter = Reporter(
            self.counters,
            self.spec.name,
            interactive=options.interactive,
            interval_s=options.log_interval_s,
            labels={"shard": options.shard.label, "attempt": options.attempt},
            output=self.spec.output.path,
        )
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._stop_reason: str | None = None
        self._resume_hint = "Run the same command again to resume"
        self.health = EndpointHealth(self._endpoint_failed)

    async def run(self) -> int:
        """Run to completion or to a stop; returns the exit code."""
        with self.output.lock():
            return await self._run()

    async def _run(self) -> int:
        """The run itself, with this shard of the output held."""
        output, options = self.output, self.options
        output.prepare()
        reporter = self.reporter
        writer = PartWriter(
            output, self.schema, flush_rows=self.spec.output.flush_rows, flush_seconds=self.spec.output.flush_seconds
        )
        recovered = writer.recover()  # before the comparison: a recovered row is a saved row
        done, reused = self._plan(output, writer)
        if recovered + reused:
            reporter.note("INFO", f"{recovered + reused} answers the last run journaled but did not save are saved now")
        counters = self.counters
        counters.total = self.prepared.summary.owned
        counters.already_done = len(done)
        counters.limit = options.limit
        if not options.interactive or options.attempt > 0:
            reporter.note(
                "INFO",
                f"{self.spec.name}: shard {options.shard.label} attempt {options.attempt}: "
                f"{counters.total} rows, {counters.already_done} already saved, "
                f"{counters.total - counters.already_done} to send",
                rows_total=counters.total,
                rows_saved=counters.already_done,
            )
        self._install_signals()
        from batchrun.client import ChatClient  # HTTP and auth are imported only by a run, not by validate
        from batchrun.endpoints import connect

        limits = Limits(self.spec.limits, share=options.shard.share, cost=await self._cost_cap())
        if limits.cost is not None:
            counters.cost, counters.currency = 0.0, limits.cost.currency
        with connect(self.spec.endpoint) as connection:
            self.health.connected(connection.base_url)
            client = ChatClient(
                connection,
                self.spec.retry,
                limits,
                counters,
                direct=self.spec.endpoint.transport == "direct",
                health=self.health,
            )
            writer.start()
            reporter.start()
            with PacedCollector():
                outcome = "failed"
                try:
                    limited = await self._pool(client, limits.concurrency, writer, done)
                    outcome = "finished" if self._stop_reason is None else "stopped"
                except BatchrunError:
                    outcome = "stopped"
                    raise
                finally:
                    for row in self.health.release():
                        self._save(writer, row)
                    self.health.settle()
                    await writer.close()
                    await reporter.stop(outcome)
                    await client.close()
        return await self._exit_code(writer, limited)

    async def _cost_cap(self) -> CostCap | None:
        """The cost ledger: limits.max_cost (this task's share) less what this shard's saved rows cost, or just a
        meter for the progress line when some price is known; None when nothing is priced."""
        book, cap = self.prepared.prices, self.spec.limits.max_cost
        if cap is None:
            return CostCap(math.inf, book, []) if book.prices else None
        spent = await asyncio.to_thread(self._saved_cost, book)
        ledger = CostCap(cap * self.options.shard.share, book, may_serve(self.spec), spent=spent)
        self.reporter.note(
            "INFO",
            f"{self.spec.name}: limits.max_cost {ledger.limit:g} {book.currency}, "
            f"{spent:.4f} spent by the rows already saved",
            cost_saved=round(spent, 6),
        )
        return ledger

    def _saved_cost(self, book: PriceBook) -> float:
        """What the rows this shard already saved cost (an unpriced row counts as nothing: it cannot be known)."""
        columns = [
            "id",
            "traffic_type",
            "prompt_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "total_tokens",
            "cached_tokens",
        ]
        owns = self.options.shard.owns
        return sum(book.cost(row_usage(row)) or 0.0 for row in self.output.saved.scan(columns) if owns(row["id"]))

    def _plan(self, output: OutputWriter, writer: PartWriter) -> tuple[SavedIds, int]:
        """Compare the saved rows with the input row by row, refuse or record the job, drop the gone rows, mark
        the rows to send again and save the journaled answers to them; returns the saved ids this run skips and
        how many journaled answers replaced old rows."""
        options = self.options
        record = job_record(self.spec, self.prepared.summary.identity)
        if not output.saved.parts():  # nothing saved: every row is pending, so the input is not read once more
            if options.keep:
                record["kept"] = keep_key(record)
            output.record_job(record)
            return SavedIds(), 0
        import pyarrow.compute as pc  # loaded only when saved rows are compared

        from batchrun.comparison import answered, compare, decide

        comparison = compare(self.spec, output.saved, options.shard)
        recorded = output.saved.meta()
        kept_before = kept_for(recorded, record)
        plan = decide(
            comparison,
            self.spec,
            refresh=options.refresh,
            keep=options.keep,
            retry_errors=options.retry_errors,
            recorded=recorded,
            kept_before=kept_before,
            rewritable=output.may_rewrite,
        )
        if options.keep or kept_before:
            record["kept"] = keep_key(record)
        output.record_job(record)
        output.drop(plan.gone, comparison.parts)
        output.replace_rows(plan.replace, comparison.parts)
        reused = answered(writer.held, plan, comparison)
        if reused:
            writer.replace_now(reused)
        for note in plan.notes:
            self.reporter.note("INFO", note)
        if options.retry_errors:
            retried = plan.replace.filter(pc.invert(plan.replace["ok"])).num_rows
            self.reporter.note("INFO", f"--retry-errors: {retried} error rows will be sent again")
        if plan.left:
            self.reporter.note(
                "WARNING",
                f"{plan.left} rows of this shard to send again are in parts written by a "
                "job with another task count and stay; run the same command as one task (no --shard, "
                "no CLOUD_RUN_TASK_COUNT) to send them again",
            )
        return plan.skip.adding([row["id"] for row in reused]), len(reused)

    async def _exit_code(self, writer: PartWriter, limited: bool) -> int:
        """0 when every row has a final result (or --limit was reached), else raise the reason to stop."""
        if writer.failure is not None:
            raise writer.failure
        if self._stop_reason is None and self.health.verdict is not None:
            raise StoppedError(self.health.verdict)
        if self._stop_reason is not None:
            raise StoppedError(
                f"{self._stop_reason}; {writer.rows_written} rows saved this run, "
                f"{self.counters.total - self.counters.already_done - self.counters.done} pending. " + self._resume_hint
            )
        if limited:
            return 0  # the summary said how many rows --limit leaves
        await asyncio.to_thread(self._verify_complete)  # reads every part: off the loop
        return 0

    def _verify_complete(self) -> None:
        """Read back which ids are saved: exit 0 only when every row of this shard is on disk."""
        shard = self.options.shard
        missing = self.prepared.summary.owned - self.output.saved.count_ids(None if shard.count == 1 else shard.owns)
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

    def _endpoint_failed(self, reason: str) -> None:
        """The endpoint cannot serve this run: stop at once, no grace (nothing in flight will be answered)."""
        self.stop(reason)
        self._hurry.set()

    def stop(self, reason: str) -> None:
        """Stop dispatching new rows; in-flight ones get the grace period."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self.reporter.note("WARNING", f"{self.spec.name}: {reason}; saving finished rows")
        self._stopping.set()

    async def _pool(self, client: ChatClient, concurrency: int, writer: PartWriter, done: SavedIds) -> bool:
        """Feed `concurrency` workers (one per slot the limits hold) and wait for them; returns True when --limit cut
        the run short."""
        queue: RecordQueue = asyncio.Queue(maxsize=min(concurrency * 2, 256))
        workers = [asyncio.create_task(self._worker(queue, client, writer)) for _ in range(concurrency)]
        producer = asyncio.create_task(self._produce(queue, writer, done, client))
        stop_wait = asyncio.create_task(self._stopping.wait())
        closer: asyncio.Task[None] | None = None
        limited = False
        try:
            await asyncio.wait([producer, stop_wait, *workers], return_when=asyncio.FIRST_COMPLETED)
            _raise_failures(workers)  # a worker ends before the producer only by a bug: never wait on it
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
                await asyncio.wait(
                    [in_flight, hurry], timeout=self.options.grace_s, return_when=asyncio.FIRST_COMPLETED
                )
                hurry.cancel()
                _raise_failures(workers)
        finally:
            for task in [*workers, producer, stop_wait, *([closer] if closer else [])]:
                task.cancel()
            await asyncio.gather(*workers, producer, stop_wait, return_exceptions=True)
        return limited

    async def _produce(self, queue: RecordQueue, writer: PartWriter, done: SavedIds, client: ChatClient) -> bool:
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
                    self._finish(writer, input_error(record.id, record.error or "unreadable row"), record=record)
                    continue
                body = None
                if render_here:
                    try:
                        body = self.prepared.renderer.render(record)
                    except RowInputError as exc:
                        self._finish(writer, self._unrenderable(record, exc), record=record)
                        continue
                await queue.put((record, body))
                await asyncio.sleep(0)  # one woken worker at a time: 2,000 starting at once would stall the loop
        return False

    async def _worker(self, queue: RecordQueue, client: ChatClient, writer: PartWriter) -> None:
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
                    self._finish(writer, self._unrenderable(record, exc), record=record)
                    continue
            sent = await self._send(client, record, body, functools.partial(writer.sent, record.id))
            if sent is None:
                return
            self._finish(writer, *sent, record=record)

    def _unrenderable(self, record: Record, exc: RowInputError) -> ResultRow:
        """The input error row of a row that renders into no request, naming its file and line."""
        where = f"{self.prepared.source.path}:{self.prepared.source.where} {record.line}"
        return input_error(record.id, f"{where}: {exc}")

    async def _send(
        self, client: ChatClient, record: Record, body: dict[str, Any], sent: Callable[[], None]
    ) -> tuple[ResultRow, RequestError | None] | None:
        """One row's request, retried by the client, as an ok or error row (with the error that made it); None when
        the cost cap stopped the run. `sent` journals each request as it goes out."""
        builder = self._builder_for(body)
        try:
            answer = await client.complete(body, builder.check, sent)
        except RequestError as exc:
            row = builder.failed(record.id, exc, attempts=exc.attempts)
            row["request_hash"] = self.hasher.of_sent(record, body)
            return row, exc
        except CapReached as exc:
            self._resume_hint = ""
            self.stop(exc.message)
            return None
        self.counters.tokens += int((answer.reply.response.get("usage") or {}).get("total_tokens") or 0)
        row = builder.ok(
            record.id, answer.reply, attempts=answer.attempts, latency_ms=answer.latency_ms, ttft_ms=answer.ttft_ms
        )
        row["request_hash"] = self.hasher.of_sent(record, body)
        return row, None

    def _builder_for(self, body: dict[str, Any]) -> ResultBuilder:
        """The spec's result builder, or one for an OpenAI Batch line's own response_format (checked when rendered)."""
        line_format = body.get("response_format")
        spec_format = self.spec.request.params.get("response_format")
        if self.prepared.summary.format != "openai-batch" or line_format == spec_format:
            return self.builder
        key = json.dumps(line_format, sort_keys=True)
        if key not in self._line_builders:
            self._line_builders[key] = ResultBuilder(
                thought_marker=self.spec.request.google_options.get("thought_tag_marker"), response_format=line_format
            )
        return self._line_builders[key]

    def _finish(self, writer: PartWriter, row: ResultRow, error: RequestError | None = None, *, record: Record) -> None:
        """A finished row, with its request_hash and kept columns, to the writer, unless the endpoint health watch
        holds it back."""
        if row.get("request_hash") is None:
            row["request_hash"] = self.hasher.of_record(record)  # a row that makes no request: its reason
        self.kept.fill(row, record.data)
        for ready in self.health.admit(row, error):
            self._save(writer, ready)

    def _save(self, writer: PartWriter, row: ResultRow) -> None:
        """Count a row and hand it to the writer, with the attempts of an error row it replaces; a disk that
        refuses it stops the run."""
        row["attempts"] = (row.get("attempts") or 0) + self.output.replaced_attempts.pop(row["id"], 0)
        self.counters.done += 1
        if row["status"] == "ok":
            self.counters.ok += 1
            self.counters.cut_off += row.get("finish_reason") == "length"
        else:
            self.counters.errors += 1
        try:
            writer.add(row)
        except OutputError as exc:  # the disk refused a part: a stop, the rows saved so far stay
            self.stop(exc.message)


def _raise_failures(tasks: list[asyncio.Task[None]]) -> None:
    """Re-raise the first exception a finished task ended with: a bug is exit 1, never a quiet stop."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            task.result()


async def _close(queue: RecordQueue, workers: int) -> None:
    """One end-of-work marker per worker, queued behind the last rows."""
    for _ in range(workers):
        await queue.put(None)


def run_job(spec: JobSpec, options: RunOptions) -> int:
    """Validate, then run the job; the exit code follows docs/design.md §2."""
    # pyarrow's default pool (mimalloc) keeps freed segments; a run allocates and frees input batches
    # and output parts all along, and the system allocator gives them back: 40 MB less at peak.
    pa.set_memory_pool(pa.system_memory_pool())
    map_large_blocks()
    prepared = prepare(spec, options.shard)
    return asyncio.run(Runner(prepared, options).run())
