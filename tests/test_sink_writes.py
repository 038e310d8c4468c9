"""The one writer at the end of a run: rows it has taken for a part are written, whatever the timing."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from batchrun.schema import output_schema
from batchrun.shards import Shard
from batchrun.sink import OutputWriter, PartWriter


def test_close_waits_for_a_write_still_queued_behind_other_work(tmp_path: Path) -> None:
    """A flush whose write has not started yet (the thread pool is busy) is finished by close, not cancelled:
    the last rows of a run, or of a graceful stop, are never dropped."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait)  # the only worker thread is taken
        writer = PartWriter(
            OutputWriter(str(tmp_path / "out"), Shard()), output_schema([]), flush_rows=2, flush_seconds=3600
        )
        writer.start()
        writer.add({"id": "a", "status": "ok"})
        writer.add({"id": "b", "status": "ok"})  # a full buffer wakes the flush loop
        for _ in range(100):
            if not writer._buffer:  # the loop has taken the rows; their write waits for a thread
                break
            await asyncio.sleep(0)
        assert not writer._buffer
        loop.call_soon(gate.set)
        await writer.close()
        await busy

    asyncio.run(scenario())
    parts = sorted((tmp_path / "out").glob("*.parquet"))
    assert [pq.read_table(p).column("id").to_pylist() for p in parts] == [["a", "b"]]
