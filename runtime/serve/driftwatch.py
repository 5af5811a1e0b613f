"""The runtime's drift watch: served batches sampled off the request path into each model's window.

A request only offers its batch (a check of the clock and a put into a queue of one); a thread of
its own bins the statistics (:mod:`.drift`) and raises the ``drift`` alert when a model's score
crosses the threshold (again only after it fell below half of it). Kept samples (:mod:`.capture`, opt-in) are chosen
from the same batches. The thread keeps to ``cpu_budget`` of one core: after taking a batch that cost ``t`` seconds it takes nothing for
``t / cpu_budget - t`` seconds, so a busy board samples fewer of its requests, never slows them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import BundleError
from ..config import DriftConfig
from .capture import Capture
from .drift import DriftMonitor, read_reference

log = logging.getLogger("edgec.runtime")


class DriftWatch:
    def __init__(self, config: DriftConfig, alert: Callable[[str, str], None], capture: Capture | None = None) -> None:
        self.config = config
        self.capture = capture  # kept samples (opt-in) come from the same batches
        self._on = config.enabled or (capture is not None and capture.config.enabled)
        self._alert = alert
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)  # holds one batch's arrays at most
        self._lock = threading.Lock()
        self._monitors: dict[str, tuple[str, DriftMonitor | None, str | None]] = {}  # name -> (version, monitor, why none)
        self._alerted: dict[str, bool] = {}
        self._next = 0.0
        self.busy_s = 0.0
        self.taken = 0
        self.skipped = 0
        self._thread: threading.Thread | None = None

    def offer(self, name: str, model: Any, feeds: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Called with every served batch (the request's thread): cheap, and never blocks."""
        if not self._on:
            return
        if time.monotonic() < self._next:
            self.skipped += 1
            return
        # What the thread needs of the model, not the model: a queued batch must not keep an evicted bundle
        # (its memory, its session) alive, nor let its last reference go on this thread.
        specs = (*model.inputs, *model.outputs)
        about = (model.manifest.version, model.path, dict(model.manifest.files), [s.name for s in model.inputs],
                 [s.name for s in model.outputs], {s.name for s in specs if s.shape and s.shape[0] in (None, 1)})
        try:
            self._queue.put_nowait((name, about, feeds, outputs))
        except queue.Full:
            self.skipped += 1
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="edgec-drift", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            while True:
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join(5)

    def wait_idle(self) -> None:
        """Until the batch offered last is binned (a program that wants every batch counted feeds one at a
        time and waits here, with ``cpu_budget = 1``)."""
        self._queue.join()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per model: its version's drift score (None until ``min_samples``), statistic, samples and alert."""
        out = {}
        with self._lock:
            monitors = dict(self._monitors)
        for name, (version, monitor, why) in monitors.items():
            entry: dict[str, Any] = {"version": version, "score": None, "statistic": None, "samples": 0,
                                     "threshold": self.config.threshold, "alert": False}
            if monitor is None:
                entry["unavailable"] = why
            else:
                entry.update(samples=monitor.samples, seen=monitor.seen, alert=self._alerted.get(name, False))
                if monitor.samples >= self.config.min_samples:
                    score, statistic = monitor.score()
                    entry.update(score=round(score, 4), statistic=statistic)
            out[name] = entry
        return out

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            started = time.perf_counter()
            try:
                self._take(*item)
            except Exception:  # a statistic must never take serving down
                log.exception("drift statistics of %s failed", item[0])
            finally:
                self._queue.task_done()
            spent = time.perf_counter() - started
            self.busy_s += spent
            self.taken += 1
            self._next = time.monotonic() + spent * (1.0 / self.config.cpu_budget - 1.0)

    def _monitor(self, name: str, about: tuple) -> DriftMonitor | None:
        version, path, files, inputs, outputs, _ = about
        current = self._monitors.get(name)
        if current is not None and current[0] == version:
            return current[1]
        monitor, why = None, None
        try:
            ref = read_reference(path, files, inputs, outputs)
            if ref is None:
                why = "the bundle has no drift.json: convert it again with this edgec to watch its drift"
            else:
                monitor = DriftMonitor(ref, window=self.config.window)
        except BundleError as exc:
            why = str(exc)
            log.warning("model %s: no drift statistics: %s", name, exc)
        with self._lock:
            self._monitors[name] = (version, monitor, why)
            self._alerted[name] = False
        return monitor

    def _take(self, name: str, about: tuple, feeds: dict[str, Any], outputs: dict[str, Any]) -> None:
        monitor = self._monitor(name, about) if self.config.enabled else None
        if self.capture is not None:
            self.capture.offer(name, feeds, outputs, drifting=self._alerted.get(name, False), batched=about[5])
        if monitor is None:
            return
        monitor.add(feeds, outputs)
        if monitor.samples < self.config.min_samples:
            return
        score, statistic = monitor.score()
        if score >= self.config.threshold and not self._alerted.get(name):
            self._alerted[name] = True
            self._alert(f"model {name}: what it is served has drifted from its held-out data (PSI {score:.2f} "
                        f"on {statistic} over the last {monitor.samples} samples; alert at {self.config.threshold:g})",
                        "drift")
        elif score < self.config.threshold / 2:
            self._alerted[name] = False
