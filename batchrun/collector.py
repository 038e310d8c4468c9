"""The process's memory: garbage collection on a clock while the pool runs, so no collection stalls the
many requests in flight; freed heap pages handed back after bulk reads, and large blocks mapped apart.

CPython starts a young collection when allocations minus deallocations pass 700. In the pool, the
requests sent seconds ago die as fast as new ones are born, so that count stays near zero while the
young generations fill with every request in flight: one "young" collection then walks 130,000
objects and stalls the event loop for over 100 ms (docs/reliability.md, Load). Here the pool's
collections run on a timer instead: the two young generations ten times a second, so each walks
only what was born in the last tick; a full collection only when the process's memory has grown by
FULL_AFTER_GROWTH, since in steady state it finds nothing to free and would only stall the loop.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
from typing import Any

YOUNG_EVERY_S = 0.1
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
FULL_AFTER_GROWTH = 64 << 20  # bytes the resident memory may grow by before a full collection


class PacedCollector:
    """Owns the garbage collector inside its `with` block: everything older is frozen, the rest is paced.

    Runs that overlap in one process (jobs run side by side from Python) share it: the first to
    enter takes it over and the last to leave hands it back.
    """

    _holders = 0
    _was_enabled = True

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.full_collections = 0

    def __enter__(self) -> PacedCollector:
        """Freeze what lives as long as the run (modules, the spec, the saved ids), then collect on the clock."""
        if PacedCollector._holders == 0:
            gc.freeze()
            PacedCollector._was_enabled = gc.isenabled()
            gc.disable()
        PacedCollector._holders += 1
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        """Hand the collector back to CPython as it was, once no other run holds it."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        PacedCollector._holders -= 1
        if PacedCollector._holders == 0:
            gc.unfreeze()
            if PacedCollector._was_enabled:
                gc.enable()

    async def _run(self) -> None:
        """Both young generations each tick; everything once memory has grown by FULL_AFTER_GROWTH."""
        baseline = resident_memory()
        while True:
            await asyncio.sleep(YOUNG_EVERY_S)
            if resident_memory() - baseline > FULL_AFTER_GROWTH:
                gc.collect()
                self.full_collections += 1
                baseline = resident_memory()
            else:
                gc.collect(1)


def resident_memory() -> int:
    """This process's resident memory in bytes: from /proc on Linux, else its peak (on Linux a process
    started by a bigger one inherits that one's peak, which would hide growth)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def release_memory() -> None:
    """Hand the heap pages freed after a bulk read back to the system: glibc keeps them otherwise, and a
    resumed million-row run held 40 MB of them (a no-op off glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def map_large_blocks() -> None:
    """Give each block of 1 MB or more its own mapping, returned to the system when freed (a no-op off glibc).

    glibc raises its threshold (128 KB at first) after each large block is freed; the growing buffers of a
    bulk read then come from the heap and leave it in fragments: a million-row resume peaked 35 MB higher.
    At 128 KB a run's per-flush buffers were mapped afresh each time, about 5% more CPU per row.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _glibc() -> Any:
    """The C library when it is glibc (it has malloc_trim and mallopt), else None."""
    import ctypes  # loaded only by the commands that read in bulk

    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim, libc.mallopt  # noqa: B018 (both exist only in glibc)
    except (OSError, AttributeError):
        return None
    return libc
