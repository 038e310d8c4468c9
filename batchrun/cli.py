"""Parse args -> load spec -> run; the only place errors become exit codes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from batchrun import __version__
from batchrun.errors import EXIT_BUG, EXIT_OK, EXIT_STOPPED, BatchrunError, StoppedError
from batchrun.progress import log_event, structured_logging
from batchrun.redact import redact
from batchrun.shards import parse_shard, task_attempt
from batchrun.spec import JobSpec, load_spec


def _parser() -> argparse.ArgumentParser:
    """The command line of docs/design.md §2."""
    parser = argparse.ArgumentParser(prog="batchrun", description="Bulk Chat Completions jobs to Parquet.")
    parser.add_argument("--version", action="version", version=f"batchrun {__version__} (distribution batchrun-vertex)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("job", help="the job spec (YAML)")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a spec value, e.g. --set limits.concurrency=8",
        )
        return sub

    run = command("run", "Run the job to completion, resuming from what output.path already holds.")
    run.add_argument("--limit", type=int, default=None, help="send at most N pending rows")
    run.add_argument("--retry-errors", action="store_true", help="send error rows again and replace them")
    changed = run.add_mutually_exclusive_group()
    changed.add_argument(
        "--refresh",
        action="store_true",
        help="send rows whose request changed since they were answered again, replacing their answers",
    )
    changed.add_argument(
        "--keep", action="store_true", help="keep the answers of rows whose request changed; send only pending rows"
    )
    run.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run task I of N (default: CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT)",
    )
    run.add_argument("--log-interval", type=float, default=10.0, help="seconds between JSON progress lines")
    command("validate", "Check the spec and the input; print the row count and the first request.")
    estimate = command(
        "estimate",
        "Rows, tokens, the cost range per consumption option and the time at the limits; "
        "reads the input, sends nothing.",
    )
    estimate.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="read only the first N rows and scale the figures to the whole input",
    )
    estimate.add_argument("--json", action="store_true", help="print JSON")
    status = command("status", "Done / error / pending counts from the output, in total and per shard.")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="N",
        help="split the counts as N tasks would (default: from the part files' names)",
    )
    report = command("report", "Tokens and cost by traffic_type, errors, latency percentiles, throughput per minute.")
    report.add_argument("--json", action="store_true", help="print JSON")
    export = command("export", "Write the output as one compacted Parquet file (local path or gs://).")
    export.add_argument("destination", metavar="FILE.parquet", help="where to write the file")
    export.add_argument("--join-input", action="store_true", help="add the input's columns to each row")
    export_media = command("export-media", "Write generated images/audio (the media column) as files named by id.")
    export_media.add_argument("dir", help="the directory to write into (local or gs://)")
    return parser


def _run(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun run`."""
    from batchrun.runner import RunOptions, run_job

    if args.limit is not None and args.limit < 0:
        raise BatchrunError("--limit must be 0 or more")
    options = RunOptions(
        limit=args.limit,
        retry_errors=args.retry_errors,
        refresh=args.refresh,
        keep=args.keep,
        shard=parse_shard(args.shard),
        attempt=task_attempt(),
        interactive=sys.stderr.isatty(),
        log_interval_s=args.log_interval,
    )
    if not options.interactive:
        structured_logging()
    signal.signal(signal.SIGTERM, _stop_before_start)
    return run_job(spec, options)


def _stop_before_start(signum: int, _: object) -> None:
    """SIGTERM while the input is still being checked: nothing was sent, so stop with exit 3 at once."""
    raise StoppedError(f"stopped by {signal.Signals(signum).name} before the first request; run again to start")


def _validate(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun validate`: everything a run checks before its first request."""
    from batchrun.prepare import prepare

    prepared = prepare(spec)
    summary = prepared.summary
    print(f"{args.job}: valid")
    print(
        f"input: {spec.input.path} ({summary.format}), {summary.rows} rows"
        + (f", {summary.broken} unreadable (they become input error rows)" if summary.broken else "")
    )
    print("first request:")
    print(json.dumps(_shorten(prepared.first_request), indent=2, ensure_ascii=False))
    return EXIT_OK


def _estimate(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun estimate`: everything a run checks first, then the job's size and cost; sends nothing."""
    from batchrun.estimate import estimate_job, format_estimate
    from batchrun.prepare import prepare

    if args.sample is not None and args.sample < 1:
        raise BatchrunError("--sample must be 1 or more")
    estimate = estimate_job(prepare(spec), args.sample)
    print(json.dumps(estimate, indent=2) if args.json else format_estimate(estimate))
    return EXIT_OK


def _status(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun status`."""
    from batchrun.commands.status import format_status, job_status

    if args.shards is not None and args.shards < 1:
        raise BatchrunError("--shards must be 1 or more")
    figures = job_status(spec, args.shards)
    print(json.dumps(figures, indent=2) if args.json else format_status(figures))
    return EXIT_OK


def _report(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun report`."""
    from batchrun.commands.report import build_report, format_report

    report = build_report(spec)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_OK


def _export(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun export`."""
    from batchrun.commands.export import export_job

    result = export_job(spec, args.destination, join_input=args.join_input)
    note = f", {result['duplicates_dropped']} duplicate ids dropped" if result["duplicates_dropped"] else ""
    print(
        f"{result['path']}: {result['rows']:,} rows from {result['parts']:,} part files, "
        f"{len(result['columns'])} columns{note}"
    )
    return EXIT_OK


def _export_media(args: argparse.Namespace, spec: JobSpec) -> int:
    """`batchrun export-media`."""
    from batchrun.commands.export_media import export_media

    exported = export_media(spec, args.dir)
    print(f"{spec.name}: wrote {exported.files} media files ({exported.bytes} bytes) to {args.dir}")
    return EXIT_OK


def _shorten(value: Any, key: str = "") -> Any:
    """Inline media (data: URIs, input_audio's base64 `data`) cut down for display, so the request stays readable."""
    if isinstance(value, str) and len(value) > 200 and (value.startswith("data:") or key == "data"):
        return value[:80] + f"...[{len(value)} chars]"
    if isinstance(value, dict):
        return {k: _shorten(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    return value


_COMMANDS: dict[str, Callable[[argparse.Namespace, JobSpec], int]] = {
    "run": _run,
    "validate": _validate,
    "estimate": _estimate,
    "status": _status,
    "report": _report,
    "export": _export,
    "export-media": _export_media,
}


def _complain(args: argparse.Namespace, message: str, severity: str) -> None:
    """An error for the user: plain text, or for `run` off a terminal one JSON line Cloud Logging reads."""
    if args.command == "run" and not sys.stderr.isatty():
        log_event(severity, message)
    else:
        print(f"batchrun: error: {message}", file=sys.stderr)


def _reader_went_away(command: str) -> int:
    """The reader of our output closed the pipe (`batchrun validate job.yaml | head -1`): exit quietly.

    A read-only command's reader had all it wanted (exit 0). A run cut short this way has saved its
    finished rows and resumes like any stopped run (exit 3). Both streams are pointed at /dev/null so
    the interpreter's own flush at exit cannot fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return EXIT_STOPPED if command == "run" else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user mistakes print one message and exit 2 (or 3); bugs print a traceback and exit 1."""
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.job, args.overrides)
        code = _COMMANDS[args.command](args, spec)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is seen where it can be handled
        return code
    except BrokenPipeError:
        return _reader_went_away(args.command)
    except BatchrunError as exc:
        _complain(args, redact(exc.message), "WARNING" if exc.exit_code == EXIT_STOPPED else "ERROR")
        return exc.exit_code
    except KeyboardInterrupt:
        _complain(args, "interrupted; run again to resume", "WARNING")
        return EXIT_STOPPED
    except Exception:
        import traceback

        trace = redact(traceback.format_exc())
        _complain(args, f"internal error (a bug): please report it with this traceback\n{trace}", "CRITICAL")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
