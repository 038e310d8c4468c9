"""The pool's garbage collector: young generations on the clock, a full collection only after memory grows."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap

from batchrun.collector import FULL_AFTER_GROWTH, YOUNG_EVERY_S, PacedCollector
from tests.conftest import REPO


def test_young_generations_are_collected_on_the_clock_and_the_collector_is_handed_back() -> None:
    """Inside the block CPython's own schedule is off and everything older is frozen; after it, both undone."""
    enabled_before = gc.isenabled()

    async def main() -> tuple[bool, int, int, int]:
        with PacedCollector() as collector:
            frozen = gc.get_freeze_count()
            young_before = gc.get_stats()[1]["collections"]
            cycles = []
            for _ in range(1000):  # garbage only the collector can free: each list holds itself
                cycle: list[object] = []
                cycle.append(cycle)
                cycles.append(cycle)
            del cycles, cycle
            await asyncio.sleep(YOUNG_EVERY_S * 4.5)
            return gc.isenabled(), frozen, gc.get_stats()[1]["collections"] - young_before, collector.full_collections

    enabled_inside, frozen, young, full = asyncio.run(main())
    assert not enabled_inside
    assert frozen > 1000  # this process's modules and pytest's objects
    assert young >= 3
    assert full == 0
    assert gc.isenabled() == enabled_before
    assert gc.get_freeze_count() == 0


def test_overlapping_runs_hand_the_collector_back_only_when_the_last_one_ends() -> None:
    """Two runs side by side in one process: the first to end leaves the other's pacing in place."""
    enabled_before = gc.isenabled()

    async def main() -> tuple[bool, bool]:
        with PacedCollector():
            inner = PacedCollector()
            inner.__enter__()
        disabled_after_first = not gc.isenabled()
        inner.__exit__(None, None, None)
        return disabled_after_first, gc.isenabled()

    disabled_after_first, enabled_after_last = asyncio.run(main())
    assert disabled_after_first
    assert enabled_after_last == enabled_before
    assert gc.get_freeze_count() == 0


def test_a_full_collection_follows_memory_growth_and_frees_old_cycles() -> None:
    """Cycles old enough to reach the oldest generation are freed once memory grows past the bound.

    In a fresh interpreter, so no other test's garbage is collected along with it.
    """
    script = textwrap.dedent(f"""
        import asyncio, gc, json, weakref
        from batchrun.collector import PacedCollector

        class Node:
            pass

        async def main():
            with PacedCollector() as collector:
                node = Node()
                node.me = node
                alive = weakref.ref(node)
                await asyncio.sleep(0.25)  # in use across young collections: it is moved to the oldest generation
                del node
                await asyncio.sleep(0.35)  # young collections leave it: only a full one frees it now
                survived_young = alive() is not None
                ballast = b"x" * ({FULL_AFTER_GROWTH} + (32 << 20))  # written, so resident
                await asyncio.sleep(0.35)
                del ballast
                return survived_young, alive() is None, collector.full_collections

        print(json.dumps(asyncio.run(main())))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    survived_young, freed, full = json.loads(done.stdout)
    assert survived_young
    assert freed
    assert full == 1
