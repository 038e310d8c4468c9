"""Where batchrun's CPU goes: `batchrun run` under py-spy against the simulator, summed by area.

    python bench/profile.py [--rows 20000] [--concurrency 64] [--latency 0] [--transport direct|openai]

py-spy samples the process from outside (no instrumentation in the measured run). A sample taken
while a module was being imported counts as start-up; any other is charged to the first area found
walking from the innermost frame outwards, so the shares add up to 100% of the samples taken while
batchrun was on the CPU.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

from harness import PYTHON, SimProcess, measure, write_jsonl, write_spec

IMPORTS = "<frozen importlib"
AREAS = [  # (area, substring of a frame): the innermost frame that matches one decides
    ("input: reading and parsing rows", "batchrun/sources.py"),
    ("JSON encode/decode (request and response bodies)", "json/"),
    ("tenacity (retry policy)", "tenacity/"),
    ("output: Parquet parts (writer thread)", "batchrun/sink.py"),
    ("output: building result rows", "batchrun/results.py"),
    ("requests: rendering prompts", "batchrun/prompts.py"),
    ("limits and adaptive pace", "batchrun/limits.py"),
    ("limits and adaptive pace", "batchrun/budgets.py"),
    ("limits and adaptive pace", "batchrun/pace.py"),
    ("openai SDK and its httpx2 layer (streams; transport: openai)", "openai/"),
    ("aiohttp client (request, connection pool, response parsing)", "aiohttp/"),
    ("asyncio event loop (selector, callbacks, tasks)", "asyncio/"),
    ("batchrun: pool, client and transport code", "batchrun/"),
]


def main() -> None:
    """Profile one run and print the areas, largest first."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--transport", choices=["direct", "openai"], default="direct")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    with tempfile.TemporaryDirectory(prefix="batchrun-profile-") as tmp, SimProcess(latency_s=args.latency) as sim:
        directory = Path(tmp)
        spec = write_spec(
            directory,
            sim.url,
            write_jsonl(directory / "in.jsonl", args.rows),
            limits={"concurrency": args.concurrency},
            endpoint={"transport": args.transport},
        )
        samples = directory / "samples.txt"
        result = measure(
            [
                spy,
                "record",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(samples),
                "--",
                PYTHON,
                "-m",
                "batchrun",
                "run",
                str(spec),
            ],
            cwd=directory,
            timeout=1_800,
        )
        if result.rc != 0:
            sys.exit(f"profiling failed ({result.rc}): {result.stderr[-2000:]}")
        shares: collections.Counter[str] = collections.Counter()
        for line in samples.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if any("concurrent/futures/thread.py:81" in f for f in frames[-1:]):
                continue  # an idle worker thread waiting for work
            if any(IMPORTS in frame for frame in frames):
                area = "start-up: imports"
            else:
                area = next((name for frame in reversed(frames) for name, key in AREAS if key in frame), "other")
            shares[area] += int(count)
    total = sum(shares.values())
    print(
        f"{args.rows:,} rows, concurrency {args.concurrency}, latency {args.latency} s, transport "
        f"{args.transport}: {result.cpu_s / args.rows * 1000:.2f} ms CPU per request under py-spy, "
        f"{total:,} samples\n"
    )
    print("| share | area |\n|---|---|")
    for name, count in shares.most_common():
        print(f"| {count / total:.1%} | {name} |")


if __name__ == "__main__":
    main()
