"""A virtual clock for asyncio code: time jumps straight to the next timer, so nothing sleeps for real."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps straight to the next timer instead of waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        select = self._selector.select  # type: ignore[attr-defined]

        def jump(timeout: float | None = None) -> Any:
            if timeout is not None:  # a tick at least, as a real clock moves, so float rounding cannot stall it
                self._now += max(timeout, 1e-6)
                timeout = 0
            return select(timeout)

        self._selector.select = jump  # type: ignore[attr-defined]

    def time(self) -> float:
        """The virtual clock."""
        return self._now


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on virtual time."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def now() -> float:
    """The running loop's clock."""
    return asyncio.get_running_loop().time()
