"""Run the fault suite and print its measured figures as Markdown tables (the source of docs/reliability.md).

    python bench/reliability.py                      # the sample CI runs (about 3 minutes)
    python bench/reliability.py --all                # every case, the slow ones too (about 20 minutes)
    python bench/reliability.py --all -k storm       # any pytest selection

Each fault test calls `faults.record(...)`; with $BATCHRUN_FIGURES set, those lines are appended to
that file, which this script reads back after pytest exits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUITES = [
    "tests/test_fault_endpoint.py",
    "tests/test_fault_kill.py",
    "tests/test_fault_storage.py",
    "tests/test_fault_input.py",
    "tests/test_fault_secrets.py",
    "tests/test_fault_load.py",
]


def _cell(value: Any) -> str:
    """One table cell: compact JSON for nested values, pipes escaped."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text.replace("|", "\\|").replace("\n", " ")


def render(entries: list[dict[str, Any]]) -> str:
    """One Markdown table per test file, one row per recorded case, columns in first-seen order."""
    out: list[str] = []
    for suite in SUITES:
        rows = [e for e in entries if e["test"].startswith(suite)]
        if not rows:
            continue
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns and k != "test")
        out.append(f"### {suite}\n")
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        out.extend("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def main() -> int:
    """Run pytest on the fault suites with figures recording on, then print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="include the slow cases (-m '')")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as scratch:
        figures = Path(scratch) / "figures.jsonl"
        # One case at a time (-n 0): the figures are of the runner alone, not of cases beside it.
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-n", "0", *SUITES, *pytest_args]
        if args.all:
            command += ["-m", ""]
        code = subprocess.run(command, cwd=REPO, env={**os.environ, "BATCHRUN_FIGURES": str(figures)}).returncode
        entries = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    print(render(entries))
    return code


if __name__ == "__main__":
    sys.exit(main())
