"""A memory-bounded dynamic batcher per model.

Requests queue up to ``max_queue`` requests and ``max_bytes`` of input; a full queue rejects
at once (backpressure) instead of growing. A worker takes up to ``max_batch_size`` requests,
waiting at most ``max_queue_delay_ms`` after the first for more, runs them as one batch and
hands each caller its rows. A request that finds the model idle and the queue empty runs
at once in the caller's thread; requests arriving meanwhile queue and are batched. Requests
past their deadline are dropped before they run.
Models with a fixed batch of 1 are fed one sample at a time by :class:`LoadedModel`. Under
memory pressure the batch size halves and an alert is raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...errors import DeadlineError, InputError, QueueFullError
from ..config import BatcherConfig

log = logging.getLogger("edgec.runtime")


@dataclass
class BatcherStats:
    requests: int = 0
    rejected: int = 0
    expired: int = 0
    errors: int = 0
    batches: int = 0
    samples: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    pressure_alerts: int = 0


@dataclass
class _Request:
    feeds: dict[str, np.ndarray]
    rows: int
    nbytes: int
    deadline: float | None
    future: Future = field(default_factory=Future)


class Batcher:
    """Batches requests for one model.

    Args:
        name: The model's name (for messages).
        predict: ``predict(feeds) -> dict of outputs`` (a :class:`LoadedModel`'s, usually
            looked up through the cache for each batch).
        config: Limits.
        pressure: ``pressure() -> bool``: the system is short of memory.
        alert: Called with a message when the batch size is cut for memory pressure.
    """

    def __init__(self, name: str, predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 config: BatcherConfig | None = None, *, pressure: Callable[[], bool] | None = None,
                 alert: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.config = config or BatcherConfig()
        self._predict = predict
        self._pressure = pressure or (lambda: False)
        self._alert = alert or (lambda msg: log.warning(msg))
        self._queue: deque[_Request] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self.batch_limit = self.config.max_batch_size
        self.stats = BatcherStats()
        self._last_batch_s = 0.0
        self._run_lock = threading.Lock()  # one batch runs at a time (TFLite interpreters are not thread-safe)
        self._worker = threading.Thread(target=self._run, name=f"edgec-batcher-{name}", daemon=True)
        self._worker.start()

    def run(self, feeds: dict[str, np.ndarray], *, deadline_s: float | None = None,
            timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Run one request and wait for its outputs.

        A request that finds the model idle and nobody queued runs at once in the caller's
        thread, with no hand-off; otherwise it queues and is batched like :meth:`submit`.

        Raises:
            QueueFullError, DeadlineError, InputError: As for :meth:`submit`.
            TimeoutError: No answer within ``timeout_s``.
        """
        if self._run_lock.acquire(blocking=False):
            try:
                if not self._queue and not self._closing:
                    with self._cond:
                        self.stats.requests += 1
                    if deadline_s is not None and deadline_s <= 0:
                        self.stats.expired += 1
                        raise DeadlineError(f"the request to {self.name} passed its deadline")
                    self._check_pressure()
                    shape = next(iter(feeds.values())).shape
                    return self._call(feeds, int(shape[0]) if shape else 1)
            finally:
                self._run_lock.release()
        return self.submit(feeds, deadline_s=deadline_s, inline=False).result(timeout_s)

    def submit(self, feeds: dict[str, np.ndarray], *, deadline_s: float | None = None,
               inline: bool = True) -> Future:
        """Queue one request (any number of rows); its future resolves to its outputs.

        With ``inline`` (the default), a request that finds the model idle runs at once in
        the caller's thread before this returns; an event loop that must not block passes
        ``inline=False``.

        Raises:
            QueueFullError: The queue is at ``max_queue`` requests or ``max_bytes``.
            InputError: Inputs whose batch sizes differ.
        """
        rows = {int(v.shape[0]) if v.shape else 1 for v in feeds.values()}
        if len(rows) != 1:
            raise InputError(f"inputs have different batch sizes: {sorted(rows)}")
        nbytes = sum(int(np.asarray(v).nbytes) for v in feeds.values())
        deadline = time.monotonic() + deadline_s if deadline_s is not None else None
        with self._cond:
            self.stats.requests += 1
            if self._closing:
                self.stats.rejected += 1
                raise QueueFullError(f"model {self.name} is shutting down", retry_after_s=1.0)
            if len(self._queue) >= self.config.max_queue or self._bytes + nbytes > self.config.max_bytes:
                self.stats.rejected += 1
                retry = max(0.001, self._last_batch_s * (len(self._queue) / max(self.batch_limit, 1) + 1))
                raise QueueFullError(
                    f"model {self.name} is busy: {len(self._queue)} requests ({self._bytes} bytes) queued, "
                    f"limits {self.config.max_queue} requests / {self.config.max_bytes} bytes", retry_after_s=retry)
            request = _Request(feeds, rows.pop(), nbytes, deadline)
            # An idle model runs the request at once in the caller's thread: there is nobody
            # to batch with, and the hand-off to the worker would cost more than the wait saves.
            inline = inline and not self._queue and self._run_lock.acquire(blocking=False)
            if not inline:
                self._queue.append(request)
                self._bytes += nbytes
                self._cond.notify()
        if inline:
            try:
                self._check_pressure()
                if deadline is not None and time.monotonic() > deadline:
                    self.stats.expired += 1
                    request.future.set_exception(DeadlineError(f"the request to {self.name} passed its deadline"))
                elif request.future.set_running_or_notify_cancel():
                    self._execute([request])
            finally:
                self._run_lock.release()
        return request.future

    @property
    def last_run_s(self) -> float:
        """How long the last batch took to run (0 before the first)."""
        return self._last_batch_s

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def describe(self) -> dict[str, Any]:
        with self._cond:
            return {"config": asdict(self.config), "batch_limit": self.batch_limit, "queue_depth": len(self._queue),
                    "queued_bytes": self._bytes, "stats": asdict(self.stats)}

    def close(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop taking requests; finish the queued ones (``drain``) or fail them."""
        with self._cond:
            self._closing = True
            if not drain:
                while self._queue:
                    req = self._queue.popleft()
                    req.future.set_exception(QueueFullError(f"model {self.name} shut down", retry_after_s=1.0))
                self._bytes = 0
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker ---------------------------------------------------------------------------
    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first_at = time.monotonic()
            limit = self.batch_limit
            wait_until = first_at + self.config.max_queue_delay_ms / 1000
            while sum(r.rows for r in self._queue) < limit and not self._closing:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[_Request] = []
            rows = 0
            while self._queue and (not taken or rows + self._queue[0].rows <= limit):
                req = self._queue.popleft()
                self._bytes -= req.nbytes
                taken.append(req)
                rows += req.rows
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            self._check_pressure()
            now = time.monotonic()
            live = []
            for req in taken:
                if req.deadline is not None and now > req.deadline:
                    self.stats.expired += 1
                    req.future.set_exception(DeadlineError(f"the request to {self.name} passed its deadline in the queue"))
                elif req.future.set_running_or_notify_cancel():
                    live.append(req)
            if live:
                with self._run_lock:
                    self._execute(live)

    def _execute(self, reqs: list[_Request]) -> None:
        names = list(reqs[0].feeds)
        started = time.perf_counter()
        try:
            if len(reqs) == 1 or any(list(r.feeds) != names for r in reqs):
                groups = [[r] for r in reqs]
            else:
                groups = [reqs]
            for group in groups:
                try:
                    feeds = (group[0].feeds if len(group) == 1
                             else {n: np.concatenate([r.feeds[n] for r in group], axis=0) for n in names})
                    out = self._predict(feeds)
                except Exception as exc:
                    if len(group) > 1:  # one bad request must not fail its batch-mates
                        for r in group:
                            self._execute_one(r)
                        continue
                    self.stats.errors += 1
                    group[0].future.set_exception(exc)
                    continue
                start = 0
                for r in group:
                    r.future.set_result({k: v[start:start + r.rows] for k, v in out.items()})
                    start += r.rows
                size = sum(r.rows for r in group)
                self.stats.batches += 1
                self.stats.samples += size
                self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1
        finally:
            self._last_batch_s = time.perf_counter() - started

    def _execute_one(self, req: _Request) -> None:
        try:
            out = self._call(req.feeds, req.rows)
        except Exception as exc:
            req.future.set_exception(exc)
            return
        req.future.set_result(out)

    def _call(self, feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """One request alone, under the run lock; counts it."""
        started = time.perf_counter()
        try:
            out = self._predict(feeds)
        except Exception:
            self.stats.errors += 1
            raise
        finally:
            self._last_batch_s = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.samples += rows
        self.stats.batch_sizes[rows] = self.stats.batch_sizes.get(rows, 0) + 1
        return out

    def _check_pressure(self) -> None:
        if self._pressure():
            if self.batch_limit > 1:
                self.batch_limit = max(1, self.batch_limit // 2)
                self.stats.pressure_alerts += 1
                self._alert(f"memory pressure: batch size for {self.name} cut to {self.batch_limit}")
        elif self.batch_limit < self.config.max_batch_size:
            self.batch_limit = min(self.config.max_batch_size, self.batch_limit * 2)
