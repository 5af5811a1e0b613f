"""A memory-bounded LRU cache of loaded bundles.

Each model is charged what it really costs: its file size plus the resident memory its
load and warm-up added (measured from ``/proc``), not a guess. Loading a model that does not
fit evicts the least recently used unpinned ones first; pinned models are never evicted.
When the machine itself runs short of memory (psutil), the cache evicts before the kernel's
OOM killer picks the whole process.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from ...errors import BundleError, EdgecError, ValidationError, first_line
from ..bundle.manifest import read_manifest
from ..bundle.model import LoadedModel, load
from ..bundle.parity import require_parity
from ..bundle.probe import probe
from ..bundle.signing import TrustedKeys, verify_signature
from ..system import available_bytes, release_freed_memory, rss_bytes

log = logging.getLogger("edgec.runtime")


@dataclass
class CacheStats:
    """Counters since start."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    pressure_evictions: int = 0
    load_failures: int = 0
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0


@dataclass
class Entry:
    """One loaded model and what it costs."""

    name: str
    version: str
    model: LoadedModel
    file_bytes: int
    rss_bytes: int
    pinned: bool
    load_seconds: float
    warmup_seconds: float
    last_used: float = field(default_factory=time.monotonic)

    @property
    def bytes(self) -> int:
        return self.file_bytes + max(self.rss_bytes, 0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "bytes": self.bytes, "file_bytes": self.file_bytes,
                "rss_bytes": self.rss_bytes, "pinned": self.pinned, "load_seconds": round(self.load_seconds, 4),
                "warmup_seconds": round(self.warmup_seconds, 4), "format": self.model.manifest.format,
                "precision": self.model.manifest.precision,
                "sha256": self.model.manifest.files.get(self.model.manifest.model_file)}


class ModelCache:
    """Bundles by name, loaded on demand within ``budget_bytes``.

    Args:
        budget_bytes: Most memory the loaded models may cost together.
        threads: Threads per model (default: each bundle's profile).
        min_available_bytes: Evict when the system has less than this available.
        loader: ``loader(path) -> LoadedModel`` (default: :func:`edgec.runtime.load`, lean).
        memory: How to read this process's memory (default: :func:`rss_bytes`).
        isolate: Load and run each bundle in a child process first (:mod:`edgec.runtime.bundle.probe`):
            one that crashes or hangs its backend is refused without taking this process down.
        trusted: Serve only bundles signed by one of these keys (checked before anything else).
    """

    def __init__(self, budget_bytes: int, *, threads: int | None = None, min_available_bytes: int | None = None,
                 loader: Callable[[Path], LoadedModel] | None = None,
                 memory: Callable[[], int | None] = rss_bytes, isolate: bool = False,
                 trusted: TrustedKeys | None = None) -> None:
        if budget_bytes <= 0:
            raise ValidationError(f"the model cache budget must be positive, got {budget_bytes} bytes")
        self.budget_bytes = budget_bytes
        self.min_available_bytes = min_available_bytes
        self._loader = loader or (lambda p: load(p, threads=threads, lean=True))
        self._threads = threads
        self.isolate = isolate
        self.trusted = trusted
        self._probed: set[tuple[str, str]] = set()  # (bundle, model sha256) that loaded in a child
        self._memory = memory
        self._paths: dict[str, Path] = {}
        self._pinned: set[str] = set()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()  # one load at a time: RSS deltas stay attributable
        self.stats = CacheStats()

    # -- registry ---------------------------------------------------------------------------
    def register(self, name: str, path: str | Path, *, pinned: bool = False) -> None:
        """Make bundle ``path`` known as ``name`` (nothing is loaded yet)."""
        path = Path(path)
        if not path.exists():
            raise BundleError(f"bundle folder {path} does not exist: write it with edgec convert ... --out {path}, "
                              "or fix the model's path")
        if not (path / "manifest.json").is_file():
            raise BundleError(f"{path} is not an edgec bundle (no manifest.json)")
        with self._lock:
            self._paths[name] = path
            if pinned:
                self._pinned.add(name)

    def unregister(self, name: str) -> None:
        """Forget ``name``: evicted if loaded, and no longer loadable until registered again."""
        self.evict(name)
        with self._lock:
            self._paths.pop(name, None)
            self._pinned.discard(name)

    def path(self, name: str) -> Path:
        """The bundle folder ``name`` serves from.

        Raises:
            KeyError: No model is registered under ``name``.
        """
        with self._lock:
            return self._paths[name]

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values())

    # -- use -----------------------------------------------------------------------------------
    def get(self, name: str) -> LoadedModel:
        """The loaded model called ``name``, loading it (and evicting others) if needed.

        Raises:
            KeyError: No model is registered under ``name``.
            BundleError, IntegrityError: The bundle cannot be loaded; nothing else changes.
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                self.stats.hits += 1
                entry.last_used = time.monotonic()
                self._entries.move_to_end(name)
                return entry.model
            if name not in self._paths:
                raise KeyError(name)
            self.stats.misses += 1
            path = self._paths[name]
        return self._load(name, path).model

    def peek(self, name: str) -> LoadedModel | None:
        """The model if it is loaded, without loading it or counting a hit."""
        with self._lock:
            entry = self._entries.get(name)
            return entry.model if entry is not None else None

    def preload(self, names: list[str] | None = None) -> list[str]:
        """Load and warm up ``names`` (default: all registered, pinned first); return the failures."""
        failed = []
        order = sorted(names or self.names, key=lambda n: n not in self._pinned)
        for name in order:
            try:
                self.get(name)
            except EdgecError as exc:
                failed.append(name)
                log.error("cannot preload model %s: %s", name, exc)
        return failed

    def reload(self, name: str, path: str | Path | None = None) -> Entry:
        """Load a new version of ``name`` (from ``path`` or its registered folder) and swap it in.

        The old version keeps serving until the new one has loaded and warmed up; if the
        new one fails, the old one stays and the error is raised.
        """
        with self._lock:
            if name not in self._paths and path is None:
                raise KeyError(name)
            new_path = Path(path) if path is not None else self._paths[name]
        entry = self._load(name, new_path, replace=True)
        with self._lock:
            self._paths[name] = new_path
        return entry

    def evict(self, name: str) -> bool:
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is None:
                return False
            self.stats.evictions += 1
        log.info("evicted model %s (%d bytes)", name, entry.bytes)
        del entry
        gc.collect()
        release_freed_memory()
        return True

    def relieve_pressure(self) -> list[str]:
        """Evict least recently used unpinned models while the system is short of memory."""
        evicted: list[str] = []
        if self.min_available_bytes is None:
            return evicted
        while True:
            avail = available_bytes()
            if avail is None or avail >= self.min_available_bytes:
                return evicted
            victim = self._victim()
            if victim is None:
                return evicted
            self.evict(victim)
            self.stats.pressure_evictions += 1
            evicted.append(victim)
            log.warning("memory pressure: %d bytes available, evicted %s", avail, victim)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "budget_bytes": self.budget_bytes,
                "used_bytes": self.used_bytes(),
                "registered": self.names,
                "loaded": [e.describe() for e in self._entries.values()],
                "stats": asdict(self.stats),
            }

    # -- internals ------------------------------------------------------------------------
    def _probe(self, path: Path) -> None:
        """With ``isolate``: load ``path`` in a child process first, once per model file."""
        if not self.isolate:
            return
        manifest = read_manifest(path)
        key = (str(path.resolve()), manifest.files[manifest.model_file])
        if key not in self._probed:
            probe(path, threads=self._threads, lean=True)
            self._probed.add(key)

    def _victim(self, keep: str | None = None) -> str | None:
        with self._lock:
            for name in self._entries:  # oldest first
                if name not in self._pinned and name != keep:
                    return name
        return None

    def _make_room(self, need: int, keep: str | None = None) -> None:
        while self.used_bytes() + need > self.budget_bytes:
            victim = self._victim(keep)
            if victim is None:
                return
            self.evict(victim)

    def _load(self, name: str, path: Path, *, replace: bool = False) -> Entry:
        with self._load_lock:
            with self._lock:
                entry = self._entries.get(name)
                if entry is not None and not replace:  # loaded by another thread meanwhile
                    return entry
            file_bytes = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            if file_bytes > self.budget_bytes:
                self.stats.load_failures += 1
                raise BundleError(f"model {name} ({file_bytes} bytes on disk) cannot fit the cache budget "
                                  f"of {self.budget_bytes} bytes")
            self._make_room(file_bytes, keep=name)
            release_freed_memory()
            before = self._memory() or 0
            started = time.perf_counter()
            try:
                if self.trusted is not None:  # before anything reads the model: who wrote it?
                    verify_signature(path, self.trusted)
                self._probe(path)
                model = self._loader(path)
                loaded = time.perf_counter()
                model.warm_up()
                if not self.isolate:  # (the child process checked it otherwise)
                    require_parity(model)
            except EdgecError:
                self.stats.load_failures += 1
                raise
            except Exception as exc:  # an error type of a backend's own: refused, typed
                self.stats.load_failures += 1
                raise BundleError(f"model {name} could not be loaded from {path}: {type(exc).__name__}: "
                                  f"{first_line(exc)}") from None
            warmed = time.perf_counter()
            rss = (self._memory() or 0) - before
            entry = Entry(name, model.version, model, file_bytes, rss, name in self._pinned, loaded - started, warmed - loaded)
            with self._lock:
                self.stats.load_seconds += entry.load_seconds
                self.stats.warmup_seconds += entry.warmup_seconds
                self._entries.pop(name, None)
                self._entries[name] = entry
            self._make_room(0, keep=name)
            if self.used_bytes() > self.budget_bytes and name not in self._pinned:
                self.evict(name)
                self.stats.load_failures += 1
                raise BundleError(f"model {name} costs {entry.bytes} bytes loaded, more than the cache budget "
                                  f"of {self.budget_bytes} bytes leaves")
            log.info("loaded model %s version %s: %d bytes in %.3fs (+%.3fs warm-up)", name, entry.version,
                     entry.bytes, entry.load_seconds, entry.warmup_seconds)
            self.relieve_pressure()
            return entry
