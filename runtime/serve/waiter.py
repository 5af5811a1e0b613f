"""Answers from the batcher's worker thread back to the event loop, cheaply.

Each request on the loop waits for a future its model's batcher resolves in another
thread. Doing that the obvious way (``asyncio.wrap_future`` and ``wait_for``) costs a
task, a timer and a wake-up of the loop per request; here a batch's answers wake the loop
once, and one timer per second sweeps the requests past their deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from ...errors import DeadlineError

SWEEP_S = 0.25  # how often deadlines are checked


class Waiter:
    """Lets coroutines on one event loop await ``concurrent.futures.Future`` objects resolved elsewhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._posted: deque[Future] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._pending: dict[Future, tuple[asyncio.Future, float, str]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    async def wait(self, future: Future, timeout_s: float, message: str) -> Any:
        """The future's result, awaited; ``DeadlineError(message)`` after ``timeout_s`` (the future is
        then cancelled: still queued, it will not run)."""
        waiter = self._loop.create_future()
        self._pending[future] = (waiter, self._loop.time() + timeout_s, message)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)
        future.add_done_callback(self._post)
        try:
            return await waiter
        finally:
            self._pending.pop(future, None)

    def _post(self, future: Future) -> None:
        """(any thread) Hand a resolved future to the loop; one wake-up for all posted meanwhile."""
        self._posted.append(future)
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        posted = self._posted
        while posted:
            future = posted.popleft()
            entry = self._pending.get(future)
            if entry is None or entry[0].done():
                continue
            waiter, _, message = entry
            if future.cancelled():
                waiter.set_exception(DeadlineError(message))
            elif future.exception() is not None:
                waiter.set_exception(future.exception())
            else:
                waiter.set_result(future.result())

    def _sweep(self) -> None:
        now = self._loop.time()
        for future, (waiter, deadline, message) in list(self._pending.items()):
            if now >= deadline and not waiter.done():
                future.cancel()
                waiter.set_exception(DeadlineError(message))
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep) if self._pending else None
