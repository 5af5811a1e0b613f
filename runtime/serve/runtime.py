"""The serving core: a memory-bounded cache of bundles and a batcher per model, without HTTP.

:class:`Runtime` is what ``edgec serve`` runs behind its HTTP API, and what a Python program
on the board can use directly: ``Runtime(ServeConfig.from_toml("runtime.toml")).predict(name, feeds)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import AccessError, DeadlineError, EdgecError, InputError
from ...formats import FORMATS
from .batcher import Batcher
from .cache import ModelCache
from .capture import Capture
from .driftwatch import DriftWatch
from .repository import Repository
from ..config import ModelConfig, ServeConfig
from ..bundle.manifest import Manifest, read_manifest
from ..bundle.signing import TrustedKeys
from .metrics import LatencyWindow, prometheus_text
from ..system import MemoryPressure, available_bytes, rss_bytes

log = logging.getLogger("edgec.runtime")
PRESSURE_EVERY_S = 0.05  # how stale a reading of the system's free memory may be


class Runtime:
    """The serving core: a cache of bundles and a batcher per model. Usable without HTTP.

    Args:
        config: What to serve and within which limits.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.started = time.time()
        self.cache = ModelCache(int(config.budget_mb * 2**20), threads=config.threads,
                                min_available_bytes=int(config.min_available_mb * 2**20)
                                if config.min_available_mb else None, isolate=config.isolate,
                                trusted=TrustedKeys.from_files(config.trusted_keys) if config.trusted_keys else None)
        self.batchers: dict[str, Batcher] = {}
        self.latency: dict[str, LatencyWindow] = {}
        self.failed: dict[str, str] = {}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=100)
        self.alert_listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. telemetry's events
        # Parts that report their own health (telemetry): name -> check returning {"ok": bool, ...}.
        self.health_checks: dict[str, Callable[[], dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.capture = Capture(config.capture)  # opt-in: sampled inputs kept on the board
        self.drift = DriftWatch(config.drift, self.alert, self.capture)  # served data against the bundle's
        self.pressure = MemoryPressure(self.cache.min_available_bytes, every_s=PRESSURE_EVERY_S)
        self.repository = Repository(self)  # load and unload by name (the repository extension)
        for m in config.models:
            try:
                self.cache.register(m.name, m.path, pinned=m.pinned)
            except EdgecError as exc:
                self.failed[m.name] = str(exc)
                log.error("model %s refused: %s", m.name, exc)
                continue
            self._batcher(m.name)
        for m in config.models:
            if m.preload and m.name not in self.failed:
                try:
                    self.cache.get(m.name)
                except EdgecError as exc:
                    self.failed[m.name] = str(exc)
                    log.error("model %s refused: %s", m.name, exc)

    def _batcher(self, name: str) -> Batcher:
        with self._lock:
            if name not in self.batchers:
                self.batchers[name] = Batcher(name, lambda feeds, n=name: self._serve(n, feeds),
                                              self.config.batcher, pressure=self.pressure, alert=self.alert)
                self.latency[name] = LatencyWindow()
            return self.batchers[name]

    def _serve(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.cache.get(name)
        outputs = model.predict(feeds)
        self.drift.offer(name, model, feeds, outputs)
        return outputs

    def alert(self, message: str, kind: str = "memory_pressure") -> None:
        log.warning(message)
        alert = {"time": time.time(), "kind": kind, "message": message}
        self.alerts.append(alert)
        for listener in list(self.alert_listeners):
            try:
                listener(alert)
            except Exception:  # a broken listener must not break serving
                log.exception("alert listener failed")

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}``, or ``"degraded"`` with the part that is not well (a stopped telemetry sender)."""
        parts = {}
        for name, check in list(self.health_checks.items()):
            try:
                parts[name] = check()
            except Exception as exc:  # a check that fails says so
                parts[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        ok = all(part.get("ok") for part in parts.values())
        return {"status": "ok" if ok else "degraded", **parts}

    @property
    def ready(self) -> bool:
        return bool(self.batchers) and all(m.name not in self.failed for m in self.config.models if m.preload)

    def model_ready(self, name: str) -> bool:
        """Whether model ``name`` is served and not refused."""
        return name in self.batchers and name not in self.failed

    def unknown(self, name: str) -> str:
        """What to answer a request for a model this runtime does not serve."""
        return f"unknown model {name!r}; serving {', '.join(sorted(self.batchers)) or 'none'}"

    def predict(self, name: str, feeds: dict[str, np.ndarray], *, deadline_s: float | None = None) -> dict[str, np.ndarray]:
        """Run ``feeds`` through model ``name`` via its batcher.

        Raises:
            KeyError: Unknown model.
            InputError, QueueFullError, DeadlineError, BundleError: As the names say.
        """
        if name not in self.batchers:
            raise KeyError(name)
        started = time.perf_counter()
        timeout = deadline_s if deadline_s is not None else self.config.request_timeout_s
        try:
            feeds = self._checked(name, feeds)
            result = self.batchers[name].run(feeds, deadline_s=deadline_s, timeout_s=timeout + 1.0)
        except TimeoutError:
            raise DeadlineError(f"model {name} did not answer within {timeout:g}s") from None
        except Exception as exc:
            self.latency[name].error(exc)
            raise
        self.latency[name].add(time.perf_counter() - started)
        return result

    def submit(self, name: str, feeds: dict[str, np.ndarray], *, deadline_s: float | None = None,
               inline: bool = False) -> Future:
        """Queue ``feeds`` for model ``name``; the future resolves in the batcher's worker.

        With ``inline``, a request that finds the model idle and nobody queued runs at once in
        this thread instead, and the future is done when this returns.

        Raises:
            KeyError: Unknown model.
            QueueFullError, InputError: As for :meth:`Batcher.submit`.
        """
        if name not in self.batchers:
            raise KeyError(name)
        latency = self.latency[name]
        try:
            feeds = self._checked(name, feeds)
        except Exception:
            latency.errors += 1
            raise
        started = time.perf_counter()
        try:
            future = self.batchers[name].submit(feeds, deadline_s=deadline_s, inline=inline)
        except Exception:
            latency.errors += 1
            raise

        def record(f: Future) -> None:
            if f.cancelled() or f.exception() is not None:
                latency.error(None if f.cancelled() else f.exception())
            else:
                latency.add(time.perf_counter() - started)

        future.add_done_callback(record)
        return future

    def refused(self, name: str, exc: BaseException) -> None:
        """Count a request for model ``name`` refused before it reached the model (a body too large, or not
        decodable): one of that model's errors, never a failure (the request's fault, or the server's load)."""
        if name in self.latency:
            self.latency[name].errors += 1

    def _checked(self, name: str, feeds: Any) -> dict[str, np.ndarray]:
        """Check a request against its model before it queues (loading the model if it is not)."""
        model = self.cache.peek(name)
        return (model or self.cache.get(name)).check(feeds)

    def reload(self, name: str, path: str | Path | None = None) -> dict[str, Any]:
        """Swap in a new version of ``name`` (from ``path``, default its configured folder).

        Only configured models can be reloaded, and only from inside the configured model
        folders (:meth:`ServeConfig.roots`): a reload cannot add a model or read elsewhere.

        Raises:
            KeyError: Unknown model.
            InputError: ``path`` is not a string, does not exist, or is a file.
            AccessError: ``path`` is outside the model folders.
            BundleError, IntegrityError: The new bundle is refused; the old one keeps serving.
        """
        configured = next((m for m in self.config.models if m.name == name), None)
        if configured is None and name not in self.batchers:
            raise KeyError(name)
        folder = self._reload_folder(path)
        try:
            if name not in self.batchers:  # refused at start: registered now, or refused again
                self.cache.register(name, folder or configured.path, pinned=configured.pinned)
            entry = self.cache.reload(name, folder)
        except (EdgecError, OSError) as exc:
            self.alert(f"reload of model {name} failed, the old version keeps serving: {exc}", "model_load_failure")
            raise
        self.failed.pop(name, None)
        self._batcher(name)
        return entry.describe()

    def add(self, name: str, path: Path) -> dict[str, Any]:
        """Serve bundle ``path`` as ``name`` (the repository extension's load): loaded now, or refused.

        Raises:
            BundleError, IntegrityError: The bundle is refused; nothing else changes.
        """
        self.cache.register(name, path)
        try:
            model = self.cache.get(name)
        except EdgecError:
            self.cache.unregister(name)
            raise
        self.failed.pop(name, None)
        self._batcher(name)
        return {"name": name, "version": model.version, "path": str(path)}

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (the repository extension's unload): queued requests are answered first."""
        with self._lock:
            batcher = self.batchers.pop(name, None)
        if batcher is not None:
            batcher.close(drain=True)
        self.cache.unregister(name)

    def _reload_folder(self, path: Any) -> Path | None:
        """A reload's ``path``, checked: a string naming a folder inside the model folders."""
        if path is None:
            return None
        if not isinstance(path, str) or not path:
            raise InputError(f'reload "path" must be a bundle folder as a string, got {path!r}')
        folder = Path(path)
        if not folder.exists():
            raise InputError(f"reload path {path} does not exist")
        if not folder.is_dir():
            raise InputError(f"reload path {path} is a file: give the bundle's folder (the one with manifest.json)")
        resolved = folder.resolve()
        roots = self.config.roots()
        if not any(resolved.is_relative_to(root) for root in roots):
            raise AccessError(f"reload path {path} is outside the model folders this runtime may load from "
                              f"({', '.join(map(str, roots))}); set model_roots in runtime.toml to allow it")
        return resolved

    def manifest(self, name: str) -> Manifest:
        """The manifest of model ``name``: the loaded one's, else read from its bundle.

        Raises:
            KeyError: Unknown model.
            BundleError: Its bundle's manifest cannot be read.
        """
        model = self.cache.peek(name)
        return model.manifest if model is not None else read_manifest(self.cache.path(name))

    def version(self, name: str) -> str:
        """The version model ``name`` serves: its bundle's (the first 12 hex digits of its model's sha256).

        Raises:
            KeyError: Unknown model.
        """
        return self.manifest(name).version

    def running_version(self, name: str) -> str | None:
        """The version model ``name`` serves now, or None while it is not loaded."""
        model = self.cache.peek(name)
        return model.version if model is not None else None

    def platform(self, name: str) -> str:
        """The Open Inference Protocol platform of model ``name`` (``onnxruntime_onnx``, ``tensorflow_lite``)."""
        fmt = self.manifest(name).format
        return FORMATS[fmt].platform if fmt in FORMATS else fmt

    def models(self) -> list[dict[str, Any]]:
        loaded = {e["name"]: e for e in self.cache.describe()["loaded"]}
        added = [(n, self.cache.path(n), False) for n in list(self.batchers)
                 if n not in {m.name for m in self.config.models}]  # loaded through the repository extension
        out = []
        for name, path, pinned in [(m.name, m.path, m.pinned) for m in self.config.models] + added:
            m = ModelConfig(name, path, pinned)
            row: dict[str, Any] = {"name": m.name, "path": str(m.path), "pinned": m.pinned,
                                   "loaded": m.name in loaded, "error": self.failed.get(m.name)}
            model = self.cache.peek(m.name)
            if m.name in loaded and model is not None:
                row.update(version=loaded[m.name]["version"], bytes=loaded[m.name]["bytes"],
                           inputs=[t.describe() for t in model.inputs])
            out.append(row)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "uptime_s": time.time() - self.started,
            "memory": {"rss_bytes": rss_bytes(), "available_bytes": available_bytes()},
            "cache": self.cache.describe(),
            "batchers": {n: b.describe() for n, b in self.batchers.items()},
            "latency": {n: {**lat.percentiles(), "requests": lat.count, "errors": lat.errors, "failures": lat.failures,
                            "seconds_total": lat.total_s}
                        for n, lat in self.latency.items()},
            "drift": self.drift.describe(),
            "capture": {n: self.capture.describe(n) for n in self.batchers} if self.config.capture.enabled else {},
            "alerts": list(self.alerts)[-10:],
            "failed": self.failed,
        }

    def metrics(self) -> str:
        """The statistics in Prometheus text format."""
        return prometheus_text(self.stats())

    def close(self, drain: bool = True) -> None:
        for b in self.batchers.values():
            b.close(drain=drain)
        self.drift.close()
