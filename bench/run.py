"""Every performance figure of batchrun in one command, each next to its target.

    python bench/run.py [--quick] [--only NAME ...] [--readme]

Each scenario starts the simulator in its own process (127.0.0.1 only), runs `batchrun run` as a
user would, and reads CPU and peak memory from the child's own rusage. Ratios are taken against a
baseline measured in the same run, because the machine is shared and noisy. `--readme` writes the
table into bench/README.md. Scratch inputs and outputs live in a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from harness import (
    PYTHON,
    REPO,
    SimProcess,
    batchrun,
    child_env,
    measure,
    output_rows,
    write_jsonl,
    write_parquet,
    write_spec,
)

README = Path(__file__).with_name("README.md")
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


@dataclass
class Figure:
    """One line of the table."""

    scenario: str
    name: str
    value: float
    shown: str
    target: str
    met: bool | None  # None: shown for context, no target


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A temporary directory for one scenario's inputs and outputs."""
    with tempfile.TemporaryDirectory(prefix=f"batchrun-bench-{name}-") as tmp:
        yield Path(tmp)


def run_job(directory: Path, timeout: float, *args: str, **kwargs: Any) -> Any:
    """`batchrun run job.yaml`, measured; a failed run stops the benchmark with its stderr."""
    result = measure(batchrun("run", str(directory / "job.yaml"), *args), cwd=directory, timeout=timeout, **kwargs)
    if result.rc not in (0, -9):
        raise RuntimeError(f"batchrun exited {result.rc}:\n{result.stderr[-3000:]}")
    return result


def most_in_any_minute(times: list[float], weights: list[int] | None = None) -> int:
    """The largest total over any 60-second window."""
    pairs = sorted(zip(times, weights or [1] * len(times), strict=True))
    best = total = start = 0
    for at, amount in pairs:
        total += amount
        while pairs[start][0] + 60 <= at:
            total -= pairs[start][1]
            start += 1
        best = max(best, total)
    return best


def finished_times(directory: Path) -> pl.DataFrame:
    """finished_at (seconds) and total_tokens of every saved row."""
    frame = pl.scan_parquet(f"{directory}/out/*.parquet").select("finished_at", "total_tokens").collect()
    return frame.with_columns(pl.col("finished_at").dt.epoch("us").cast(pl.Float64) / 1e6)


# --- scenarios ------------------------------------------------------------------------------------


def overhead(quick: bool) -> list[Figure]:
    """1. CPU per request, no latency: batchrun (both transports) against bare client loops."""
    rows = 3_000 if quick else 20_000
    cpu: dict[str, float] = {}
    loop_cpu: dict[str, float] = {}
    baselines = {
        "default": ["--client", "default"],
        "gather": ["--client", "default", "--loop", "gather"],
        "aiohttp": ["--client", "aiohttp"],
        "lean": ["--client", "lean"],
    }
    with scratch("overhead") as directory, SimProcess() as sim:
        source = write_jsonl(directory / "in.jsonl", rows)
        sim_before = sim.cpu_seconds()
        for name, flags in baselines.items():
            result = measure(
                [PYTHON, str(REPO / "bench" / "baseline.py"), sim.url, "--rows", str(rows), *flags],
                cwd=directory,
                timeout=900,
            )
            assert result.rc == 0 and json.loads(result.stdout)["answered"] == rows, result.stderr[-2000:]
            cpu[name] = result.cpu_s
            loop_cpu[name] = json.loads(result.stdout)["loop_cpu_s"]
        sim_per_request = (sim.cpu_seconds() - sim_before) / (len(baselines) * rows)
        for transport in ("direct", "openai"):
            out = directory / "out"
            if out.exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
            write_spec(directory, sim.url, source, endpoint={"transport": transport})
            result = run_job(directory, 900)
            assert output_rows(directory) == rows
            cpu[f"batchrun-{transport}"] = result.cpu_s
    ms = {k: v / rows * 1000 for k, v in cpu.items()}
    loop_ms = {k: v / rows * 1000 for k, v in loop_cpu.items()}
    ratio = cpu["batchrun-direct"] / cpu["default"]
    context = [
        Figure(
            "1 overhead",
            f"CPU ms/request: bare AsyncOpenAI loop as a user writes it (client and retries as "
            f"constructed by default, 64 workers), whole process, {rows:,} rows",
            ms["default"],
            f"{ms['default']:.2f}",
            "baseline",
            None,
        ),
        Figure(
            "1 overhead",
            "the same, the loop alone (imports and interpreter start left out)",
            loop_ms["default"],
            f"{loop_ms['default']:.2f}",
            "",
            None,
        ),
        Figure(
            "1 overhead",
            "CPU ms/request: the same client, a semaphore of 64 and one gather over every row",
            ms["gather"],
            f"{ms['gather']:.2f}",
            "",
            None,
        ),
        Figure(
            "1 overhead",
            "CPU ms/request: bare loop, DefaultAioHttpClient",
            ms["aiohttp"],
            f"{ms['aiohttp']:.2f}",
            "",
            None,
        ),
        Figure("1 overhead", "CPU ms/request: lean aiohttp + json loop", ms["lean"], f"{ms['lean']:.2f}", "", None),
        Figure(
            "1 overhead",
            "CPU ms/request: batchrun, `transport: openai` (every request via the SDK)",
            ms["batchrun-openai"],
            f"{ms['batchrun-openai']:.2f}",
            "",
            None,
        ),
        Figure(
            "1 overhead",
            "CPU ms/request: batchrun, `transport: direct` (default), whole process",
            ms["batchrun-direct"],
            f"{ms['batchrun-direct']:.2f}",
            "",
            None,
        ),
        Figure(
            "1 overhead",
            "CPU ms/request: the simulator (other process), for reference",
            sim_per_request * 1000,
            f"{sim_per_request * 1000:.2f}",
            "",
            None,
        ),
    ]
    return [
        *context,
        Figure(
            "1 overhead",
            "batchrun CPU/request ÷ bare AsyncOpenAI loop's (whole processes)",
            ratio,
            f"{ratio:.2f}",
            "≤ 0.6",
            ratio <= 0.6,
        ),
    ]


def latency_bound(quick: bool) -> list[Figure]:
    """2. 1,000 in flight against 2 s latency: rows/s over the ideal concurrency ÷ latency.

    Measured twice, at a constant 2 s and at 2 s on average (uniform 1.5 to 2.5 s, as real latency
    varies), for batchrun and for the lean aiohttp loop alike, as requests per second arriving at
    the simulator in the middle 60% of the run (start-up and the tail, where fewer than 1,000 are
    left, are not the steady state the ratio is about).
    """
    rows, concurrency = (6_000 if quick else 20_000), 1_000
    ideal = concurrency / 2.0
    figures: list[Figure] = []
    with scratch("latency") as directory:
        source = write_jsonl(directory / "in.jsonl", rows)
        for label, fixed, jitter in (("constant 2 s", 2.0, 0.0), ("1.5 to 2.5 s", 1.5, 1.0)):
            rate: dict[str, float] = {}
            with SimProcess(latency_s=fixed, latency_jitter_s=jitter) as sim:
                for who in ("lean", "batchrun"):
                    sim.reset()
                    if who == "lean":
                        result = measure(
                            [
                                PYTHON,
                                str(REPO / "bench" / "baseline.py"),
                                sim.url,
                                "--rows",
                                str(rows),
                                "--client",
                                "lean",
                                "--concurrency",
                                str(concurrency),
                            ],
                            cwd=directory,
                            timeout=600,
                        )
                        assert result.rc == 0, result.stderr[-2000:]
                    else:
                        subprocess.run(["rm", "-rf", str(directory / "out")], check=True)
                        write_spec(directory, sim.url, source, limits={"concurrency": concurrency})
                        run_job(directory, 600)
                    rate[who] = steady_rate(sim.arrivals()[0])
                peak = sim.stats()["max_in_flight"]
            ratio, lean = rate["batchrun"] / ideal, rate["lean"] / ideal
            varying = jitter > 0
            figures += [
                Figure(
                    "2 latency-bound",
                    f"{label}: lean aiohttp loop, achieved ÷ (concurrency ÷ latency)",
                    lean,
                    f"{lean:.3f}",
                    "",
                    None,
                ),
                Figure(
                    "2 latency-bound",
                    f"{label}: batchrun, achieved ÷ (concurrency ÷ latency) "
                    f"({rate['batchrun']:.0f} rows/s, {rows:,} rows, {peak} in flight)",
                    ratio,
                    f"{ratio:.3f}",
                    "≥ 0.95" if varying else "",
                    ratio >= 0.95 if varying else None,
                ),
            ]
    return figures


def steady_rate(times: list[float]) -> float:
    """Arrivals per second in the middle 60% of the span of `times`."""
    first, last = min(times), max(times)
    low, high = first + 0.2 * (last - first), first + 0.8 * (last - first)
    return sum(1 for t in times if low <= t < high) / (high - low)


def rate_adherence(quick: bool) -> list[Figure]:
    """3. A configured requests/min against a server enforcing the same quota over a sliding minute."""
    figures: list[Figure] = []
    minutes = 1.25 if quick else 2.5
    for quota in (3_000, 30_000):
        rows = int(quota * minutes)
        with scratch(f"rpm{quota}") as directory, SimProcess(rpm_quota=quota, latency_s=0.05) as sim:
            write_spec(
                directory,
                sim.url,
                write_jsonl(directory / "in.jsonl", rows),
                limits={"requests_per_minute": quota, "concurrency": 256},
            )
            run_job(directory, 60 * minutes + 240)
            times, statuses = sim.arrivals()
        ok = [t for t, s in zip(times, statuses, strict=True) if s == 200]
        achieved = (len(ok) - 1) / (max(ok) - min(ok)) * 60 / quota
        refused = statuses.count(429) / len(statuses)
        busiest = most_in_any_minute(times) / quota
        label = f"{quota:,}/min, {rows:,} rows"
        figures += [
            Figure(
                "3 rate adherence",
                f"{label}: achieved ÷ quota",
                achieved,
                f"{achieved:.3f}",
                "≥ 0.97",
                achieved >= 0.97,
            ),
            Figure(
                "3 rate adherence",
                f"{label}: requests answered 429",
                refused,
                f"{refused:.2%}",
                "≤ 0.5%",
                refused <= 0.005,
            ),
            Figure(
                "3 rate adherence",
                f"{label}: most requests sent in any 60 s ÷ quota",
                busiest,
                f"{busiest:.3f}",
                "≤ 1",
                busiest <= 1,
            ),
        ]
    return figures


def adaptive(quick: bool) -> list[Figure]:
    """4. No rate configured; the server enforces 6,000/min, unknown to batchrun."""
    quota, minutes = 6_000, (2 if quick else 4)
    rows = quota * minutes
    with scratch("adaptive") as directory, SimProcess(rpm_quota=quota, latency_s=0.05) as sim:
        write_spec(directory, sim.url, write_jsonl(directory / "in.jsonl", rows))
        run_job(directory, 60 * minutes + 300)
        times, statuses = sim.arrivals()
    ok = [t for t, s in zip(times, statuses, strict=True) if s == 200]
    achieved = len(ok) / ((max(ok) - min(ok)) / 60) / quota
    refused = statuses.count(429) / len(statuses)
    label = f"{quota:,}/min unknown, {rows:,} rows"
    return [
        Figure(
            "4 adaptive rate", f"{label}: achieved ÷ quota", achieved, f"{achieved:.3f}", "≥ 0.90", achieved >= 0.90
        ),
        Figure(
            "4 adaptive rate", f"{label}: requests answered 429", refused, f"{refused:.2%}", "≤ 3%", refused <= 0.03
        ),
    ]


def tokens_per_minute(quick: bool) -> list[Figure]:
    """5. A tokens/min budget with requests from a few tokens to several thousand."""
    budget = 150_000
    rows = 300 if quick else 600
    with scratch("tpm") as directory, SimProcess(tpm_quota=budget, latency_s=0.05) as sim:
        write_spec(
            directory,
            sim.url,
            write_jsonl(directory / "in.jsonl", rows, words=(5, 3_000)),
            limits={"tokens_per_minute": budget},
        )
        run_job(directory, 900)
        _, statuses = sim.arrivals()
        frame = finished_times(directory)
    times, tokens = frame.get_column("finished_at").to_list(), frame.get_column("total_tokens").to_list()
    sizes = sorted(tokens)
    achieved = (sum(tokens) - tokens[-1]) / (max(times) - min(times)) * 60 / budget
    busiest = most_in_any_minute(times, tokens) / budget
    refused = statuses.count(429) / len(statuses)
    label = f"{budget:,} tokens/min, {rows} rows of {sizes[0]} to {sizes[-1]} tokens"
    return [
        Figure(
            "5 tokens/min",
            f"{label}: most tokens used in any 60 s ÷ budget",
            busiest,
            f"{busiest:.3f}",
            "≤ 1",
            busiest <= 1,
        ),
        Figure(
            "5 tokens/min",
            f"{label}: tokens per minute over the run ÷ budget (the first minute may spend a whole budget at once)",
            achieved,
            f"{achieved:.3f}",
            "",
            None,
        ),
        Figure("5 tokens/min", f"{label}: requests answered 429", refused, f"{refused:.2%}", "0", refused == 0),
    ]


def memory(quick: bool) -> list[Figure]:
    """6. Peak RSS of whole runs, JSONL and Parquet, at two sizes; and of a resume with every row saved."""
    small, large = (20_000, 100_000) if quick else (100_000, 1_000_000)
    figures: list[Figure] = []
    with SimProcess() as sim:
        with scratch("memory-5000") as directory:
            write_spec(directory, sim.url, write_jsonl(directory / "in.jsonl", 5_000))
            result = run_job(directory, 600)
            figures.append(
                Figure(
                    "6 memory",
                    "peak RSS MB, jsonl, 5,000 rows",
                    result.peak_rss_mb,
                    f"{result.peak_rss_mb:.0f}",
                    "≤ 110",
                    result.peak_rss_mb <= 110,
                )
            )
        for kind in ("jsonl", "parquet"):
            peaks: dict[int, float] = {}
            for rows in (small, large):
                with scratch(f"memory-{kind}") as directory:
                    path = directory / f"in.{kind}"
                    (write_jsonl if kind == "jsonl" else write_parquet)(path, rows)
                    write_spec(directory, sim.url, path)
                    result = run_job(directory, 7_200)
                    assert output_rows(directory) == rows
                    peaks[rows] = result.peak_rss_mb
                    figures.append(
                        Figure(
                            "6 memory",
                            f"peak RSS MB, {kind}, {rows:,} rows ({rows / result.wall_s:.0f} rows/s)",
                            result.peak_rss_mb,
                            f"{result.peak_rss_mb:.0f}",
                            "≤ 170" if rows == large else "",
                            result.peak_rss_mb <= 170 if rows == large else None,
                        )
                    )
                    if rows == large:
                        again = run_job(directory, 1_800)
                        figures.append(
                            Figure(
                                "6 memory",
                                f"peak RSS MB, {kind}, resume with all {rows:,} saved",
                                again.peak_rss_mb,
                                f"{again.peak_rss_mb:.0f}",
                                "≤ 170",
                                again.peak_rss_mb <= 170,
                            )
                        )
            growth = peaks[large] / peaks[small]
            figures.append(
                Figure(
                    "6 memory",
                    f"{kind}: peak at {large:,} ÷ peak at {small:,}",
                    growth,
                    f"{growth:.2f}",
                    "≤ 1.3",
                    growth <= 1.3,
                )
            )
    return figures


def resume(quick: bool) -> list[Figure]:
    """7. SIGKILL once 30% of rows were sent, then run again: requests sent twice against requests in flight.

    "In flight at the kill" is every request sent whose answer was neither in a part nor in the
    answer journal (`_batchrun/journal-*.jsonl`) when the process died: those alone must be sent again.
    """
    rows = 6_000 if quick else 20_000
    concurrency = 64
    at_kill: dict[str, Any] = {}

    def time_to_kill() -> bool:
        at_kill.update(sim.stats())
        return bool(at_kill["requests"] >= 0.3 * rows)

    with scratch("resume") as directory, SimProcess(latency_s=0.2) as sim:
        write_spec(directory, sim.url, write_jsonl(directory / "in.jsonl", rows))
        run_job(directory, 600, kill_when=time_to_kill)
        saved = output_rows(directory)
        journaled = journal_rows(directory)
        sent = sim.stats()["requests"]
        run_job(directory, 600)
        total = sim.stats()["requests"]
        ids = pl.scan_parquet(f"{directory}/out/*.parquet").select(pl.col("id").n_unique(), pl.len()).collect()
    assert ids.row(0) == (rows, rows), ids
    in_flight = sent - saved - journaled
    twice = total - rows
    return [
        Figure(
            "7 resume",
            f"{rows:,} rows, SIGKILL after {sent:,} requests: requests in flight at the kill (sent, "
            f"answer neither in a part ({saved:,}) nor journaled ({journaled:,}))",
            in_flight,
            f"{in_flight}",
            f"≤ concurrency ({concurrency})",
            in_flight <= concurrency,
        ),
        Figure("7 resume", "requests sent twice", twice, f"{twice}", f"≤ {concurrency}", twice <= concurrency),
        Figure(
            "7 resume",
            "requests sent twice ÷ requests in flight at the kill",
            twice / max(in_flight, 1),
            f"{twice / max(in_flight, 1):.2f}",
            "≤ 1",
            twice <= in_flight,
        ),
    ]


def journal_rows(directory: Path) -> int:
    """Distinct ids in the answer journal a killed run left (the next run folds them into a part)."""
    from batchrun.journal import read_rows

    return len({row["id"] for row in read_rows(sorted(str(p) for p in (directory / "out").rglob("journal-*")))})


def startup(quick: bool) -> list[Figure]:
    """8. `batchrun validate` on the sample job, and the CLI's import time."""
    runs = [
        measure(batchrun("validate", "jobs/reviews-sentiment.yaml"), cwd=REPO, timeout=60)
        for _ in range(3 if quick else 9)
    ]
    assert all(r.rc == 0 for r in runs), runs[0].stderr
    fastest = min(r.wall_s for r in runs)  # the least disturbed by the machine's other load
    cpu = statistics.median(r.cpu_s for r in runs)

    def import_ms(module: str) -> float:
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", f"import {module}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=child_env(),
            check=True,
        )
        names = [name.strip() for name in module.split(",")]  # each top-level import's own cumulative time
        tops = [line for line in done.stderr.splitlines() if any(line.rstrip().endswith(f"| {n}") for n in names)]
        return sum(int(line.split("|")[1]) for line in tops) / 1000

    cli = import_ms("batchrun.cli")
    run = statistics.median(
        import_ms("batchrun.cli, batchrun.runner, batchrun.client, batchrun.endpoints")
        for _ in range(3 if quick else 9)
    )
    first = first_request_s(3 if quick else 9)
    return [
        Figure(
            "8 start-up",
            f"`batchrun validate jobs/reviews-sentiment.yaml`, wall s (fastest of {len(runs)}; "
            f"median {statistics.median(r.wall_s for r in runs):.2f})",
            fastest,
            f"{fastest:.2f}",
            "< 1",
            fastest < 1,
        ),
        Figure("8 start-up", "the same, CPU s (median)", cpu, f"{cpu:.2f}", "", None),
        Figure("8 start-up", "import batchrun.cli (python -X importtime), ms", cli, f"{cli:.0f}", "", None),
        Figure(
            "8 start-up",
            "import what `run` needs before its first request (cli, runner, client, endpoints; "
            "python -X importtime, median), ms",
            run,
            f"{run:.0f}",
            "≤ 600",
            run <= 600,
        ),
        Figure(
            "8 start-up",
            "`batchrun run` of 200 rows: process start → the simulator's first request, s (median)",
            first,
            f"{first:.2f}",
            "",
            None,
        ),
    ]


def first_request_s(times: int) -> float:
    """Seconds from starting `batchrun run` to its first request reaching the simulator, the median of `times`."""
    spans: list[float] = []
    with scratch("first-request") as directory, SimProcess() as sim:
        write_spec(directory, sim.url, write_jsonl(directory / "in.jsonl", 200))
        for _ in range(times):
            subprocess.run(["rm", "-rf", str(directory / "out")], check=True)
            sim.reset()
            started = time.monotonic()  # the simulator's arrival clock is the same system-wide monotonic clock
            run_job(directory, 120)
            spans.append(min(sim.arrivals()[0]) - started)
    return statistics.median(spans)


SCENARIOS: dict[str, Callable[[bool], list[Figure]]] = {
    "overhead": overhead,
    "latency": latency_bound,
    "rate": rate_adherence,
    "adaptive": adaptive,
    "tpm": tokens_per_minute,
    "memory": memory,
    "resume": resume,
    "startup": startup,
}


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table."""
    lines = ["| scenario | figure | measured | target | met |", "|---|---|---|---|---|"]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.scenario} | {f.name} | {f.shown} | {f.target} | {met} |")
    return "\n".join(lines)


def write_readme(text: str, command: str, seconds: float) -> None:
    """Replace the figures section of bench/README.md."""
    readme = README.read_text()
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"{START}\nMeasured {stamp} with `{command}` ({seconds / 60:.0f} min; {os.cpu_count()} cores, "
        f"load average at the end {load}).\n\n{text}\n{END}"
    )
    README.write_text(head + body + tail)


def main() -> None:
    """Run the chosen scenarios and print (and optionally record) one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs and shorter runs (about 10 minutes)")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--readme", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    started = time.monotonic()
    figures: list[Figure] = []
    for name in args.only or SCENARIOS:
        began = time.monotonic()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        found = SCENARIOS[name](args.quick)
        figures += found
        # Each scenario's figures as it ends: a long run cut short by a timeout still leaves them.
        print(f"[{name}] {time.monotonic() - began:.0f} s\n{table(found)}", file=sys.stderr, flush=True)
    text = table(figures)
    print(text)
    if args.readme:
        write_readme(
            text,
            "python bench/run.py"
            + (" --quick" if args.quick else "")
            + (f" --only {' '.join(args.only)}" if args.only else ""),
            time.monotonic() - started,
        )


if __name__ == "__main__":
    main()
