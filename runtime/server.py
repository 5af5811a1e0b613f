"""The local API: ``edgec serve`` over HTTP on loopback (standard library only).

Endpoints: ``GET /health``, ``GET /ready``, ``GET /v1/models``,
``POST /v1/models/{name}/predict`` (JSON, or ``.npy``/``.npz`` bodies), ``POST
/v1/models/{name}/reload``, ``GET /metrics`` (Prometheus text), ``GET /v1/stats``. Errors are
JSON ``{"error": message}`` with a status that says whose fault it is.

HTTP/1.1 is served by one asyncio event loop (keep-alive, requests on one connection answered
in order): parsing and answering never wait for a model, and every predict goes to its
model's batcher, whose worker runs the batches. A thread per connection, as the standard
library's server has, spent ~0.5 ms of CPU per request in thread switches and GIL hand-offs
on a 2-core host, several times what a small CNN costs.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EdgecError, InputError, ValidationError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from .batcher import Batcher, BatcherConfig, DeadlineError, QueueFullError
from .cache import ModelCache, available_bytes, rss_bytes
from .telemetry import Telemetry, TelemetryConfig

log = logging.getLogger("edgec.runtime")
# Oversized bodies up to this size are read and dropped after the 413 so the client reads
# the answer instead of a connection reset; past it the connection is closed at once.
DRAIN_LIMIT = 64 * 2**20
MAX_HEADER_BYTES = 64 * 2**10
PRESSURE_EVERY_S = 0.05  # how stale a reading of the system's free memory may be
# Bodies above this are decoded off the event loop (JSON of a large tensor takes milliseconds).
_DECODE_INLINE_BYTES = 2**20
_ROUTE = re.compile(r"^/v1/models/([A-Za-z0-9_.\-]+)/(predict|reload)$")


@dataclass(frozen=True)
class ModelConfig:
    """One bundle to serve."""

    name: str
    path: Path
    pinned: bool = False
    preload: bool = True


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edgec serve`` needs (the ``runtime.toml`` file).

    Example ``runtime.toml``::

        host = "127.0.0.1"
        port = 8080
        budget_mb = 512            # memory the loaded models may cost together
        min_available_mb = 64      # evict when the board has less free memory than this
        max_request_mb = 16
        [batcher]
        max_batch_size = 8
        max_queue_delay_ms = 2
        max_queue = 64
        max_bytes_mb = 64
        [[models]]
        name = "digits"
        path = "build/rpi4"
        pinned = true
        [telemetry]                # optional: MQTT (see edgec.runtime.telemetry)
        broker = "localhost"
        fleet = "shop"
        interval_s = 10
    """

    models: tuple[ModelConfig, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    budget_mb: float = 512.0
    min_available_mb: float | None = None
    max_request_mb: float = 16.0
    threads: int | None = None
    request_timeout_s: float = 30.0
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    telemetry: TelemetryConfig | None = None

    @classmethod
    def from_toml(cls, path: str | Path) -> ServeConfig:
        """Read a ``runtime.toml``; relative model paths are relative to the file.

        Raises:
            ValidationError: Unreadable file, unknown keys, or bad values.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValidationError(f"config {path} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValidationError(f"config {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> ServeConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        batcher = dict(data.pop("batcher", {}))
        if "max_bytes_mb" in batcher:
            batcher["max_bytes"] = int(float(batcher.pop("max_bytes_mb")) * 2**20)
        bad = sorted(set(batcher) - {f.name for f in fields(BatcherConfig)})
        if bad:
            raise ValidationError(f"unknown [batcher] key(s): {', '.join(bad)}")
        telemetry = data.pop("telemetry", None)
        if telemetry is not None:
            if not isinstance(telemetry, dict):
                raise ValidationError("[telemetry] must be a table")
            data["telemetry"] = TelemetryConfig.from_dict(telemetry, base)
        models = []
        for i, m in enumerate(data.pop("models", [])):
            extra = sorted(set(m) - {"name", "path", "pinned", "preload"})
            if extra or "name" not in m or "path" not in m:
                raise ValidationError(f"[[models]] entry {i + 1} needs name and path (unknown: {', '.join(extra) or 'none'})")
            p = Path(m["path"])
            models.append(ModelConfig(m["name"], p if p.is_absolute() else base / p, bool(m.get("pinned", False)),
                                      bool(m.get("preload", True))))
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"unknown config key(s): {', '.join(unknown)}")
        try:
            return cls(models=tuple(models), batcher=BatcherConfig(**batcher), **data)
        except (TypeError, EdgecError) as exc:
            raise ValidationError(f"bad config: {exc}") from None


class _Latencies:
    """The last N request latencies of one model, for percentiles."""

    def __init__(self, size: int = 2048) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.errors = 0

    def add(self, seconds: float) -> None:
        self.values.append(seconds)
        self.count += 1

    def percentiles(self) -> dict[str, float | None]:
        if not self.values:
            return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
        arr = np.array(self.values) * 1e3
        return {f"p{q}_ms": float(np.percentile(arr, q)) for q in (50, 95, 99)}


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
                                if config.min_available_mb else None)
        self.batchers: dict[str, Batcher] = {}
        self.latency: dict[str, _Latencies] = {}
        self.failed: dict[str, str] = {}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=100)
        self.alert_listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. telemetry's events
        self._lock = threading.Lock()
        self._pressure_reading = (-math.inf, False)  # (monotonic time, short of memory)
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
                self.batchers[name] = Batcher(name, lambda feeds, n=name: self.cache.get(n).predict(feeds),
                                              self.config.batcher, pressure=self._pressure, alert=self.alert)
                self.latency[name] = _Latencies()
            return self.batchers[name]

    def _pressure(self) -> bool:
        """Whether the board is short of memory, read at most every ``PRESSURE_EVERY_S``.

        Every batch asks; reading the system's memory costs tens of microseconds, more
        than a small model's whole run, and memory does not run out that fast.
        """
        if self.cache.min_available_bytes is None:
            return False
        now = time.monotonic()
        at, short = self._pressure_reading
        if now - at >= PRESSURE_EVERY_S:
            avail = available_bytes()
            short = avail is not None and avail < self.cache.min_available_bytes
            self._pressure_reading = (now, short)
        return short

    def alert(self, message: str, kind: str = "memory_pressure") -> None:
        log.warning(message)
        alert = {"time": time.time(), "kind": kind, "message": message}
        self.alerts.append(alert)
        for listener in list(self.alert_listeners):
            try:
                listener(alert)
            except Exception:  # a broken listener must not break serving
                log.exception("alert listener failed")

    @property
    def ready(self) -> bool:
        return bool(self.batchers) and all(m.name not in self.failed for m in self.config.models if m.preload)

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
            result = self.batchers[name].run(feeds, deadline_s=deadline_s, timeout_s=timeout + 1.0)
        except TimeoutError:
            raise DeadlineError(f"model {name} did not answer within {timeout:g}s") from None
        except Exception:
            self.latency[name].errors += 1
            raise
        self.latency[name].add(time.perf_counter() - started)
        return result

    def submit(self, name: str, feeds: dict[str, np.ndarray], *, deadline_s: float | None = None) -> Future:
        """Queue ``feeds`` for model ``name`` without running them in this thread.

        For event loops: the future resolves in the batcher's worker.

        Raises:
            KeyError: Unknown model.
            QueueFullError, InputError: As for :meth:`Batcher.submit`.
        """
        if name not in self.batchers:
            raise KeyError(name)
        latency = self.latency[name]
        started = time.perf_counter()
        try:
            future = self.batchers[name].submit(feeds, deadline_s=deadline_s, inline=False)
        except Exception:
            latency.errors += 1
            raise

        def record(f: Future) -> None:
            if f.cancelled() or f.exception() is not None:
                latency.errors += 1
            else:
                latency.add(time.perf_counter() - started)

        future.add_done_callback(record)
        return future

    def reload(self, name: str, path: str | Path | None = None) -> dict[str, Any]:
        """Swap in a new version of ``name`` (from ``path``, default its configured folder).

        Raises:
            KeyError: Unknown model.
            BundleError, IntegrityError: The new bundle is refused; the old one keeps serving.
        """
        try:
            entry = self.cache.reload(name, path)
        except (EdgecError, OSError) as exc:
            self.alert(f"reload of model {name} failed, the old version keeps serving: {exc}", "model_load_failure")
            raise
        self.failed.pop(name, None)
        self._batcher(name)
        return entry.describe()

    def models(self) -> list[dict[str, Any]]:
        loaded = {e["name"]: e for e in self.cache.describe()["loaded"]}
        out = []
        for m in self.config.models:
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
            "latency": {n: {**lat.percentiles(), "requests": lat.count, "errors": lat.errors}
                        for n, lat in self.latency.items()},
            "alerts": list(self.alerts)[-10:],
            "failed": self.failed,
        }

    def metrics(self) -> str:
        """Prometheus text exposition."""
        s = self.stats()
        lines = [
            "# HELP edgec_uptime_seconds Seconds since the runtime started.", "# TYPE edgec_uptime_seconds gauge",
            f"edgec_uptime_seconds {s['uptime_s']:.3f}",
            "# HELP edgec_process_rss_bytes Resident memory of the process.", "# TYPE edgec_process_rss_bytes gauge",
            f"edgec_process_rss_bytes {s['memory']['rss_bytes']}",
            "# HELP edgec_cache_bytes Memory charged to loaded models.", "# TYPE edgec_cache_bytes gauge",
            f"edgec_cache_bytes {s['cache']['used_bytes']}",
            "# HELP edgec_cache_budget_bytes The cache's memory budget.", "# TYPE edgec_cache_budget_bytes gauge",
            f"edgec_cache_budget_bytes {s['cache']['budget_bytes']}",
        ]
        for key in ("hits", "misses", "evictions", "pressure_evictions", "load_failures"):
            lines += [f"# TYPE edgec_cache_{key}_total counter", f"edgec_cache_{key}_total {s['cache']['stats'][key]}"]
        lines += ["# HELP edgec_requests_total Predict requests by model.", "# TYPE edgec_requests_total counter"]
        for name, b in s["batchers"].items():
            lines.append(f'edgec_requests_total{{model="{name}"}} {b["stats"]["requests"]}')
        lines += ["# TYPE edgec_requests_rejected_total counter"]
        for name, b in s["batchers"].items():
            lines.append(f'edgec_requests_rejected_total{{model="{name}"}} {b["stats"]["rejected"]}')
        lines += ["# TYPE edgec_request_errors_total counter"]
        for name, lat in s["latency"].items():
            lines.append(f'edgec_request_errors_total{{model="{name}"}} {lat["errors"]}')
        lines += ["# TYPE edgec_queue_depth gauge"]
        for name, b in s["batchers"].items():
            lines.append(f'edgec_queue_depth{{model="{name}"}} {b["queue_depth"]}')
        lines += ["# HELP edgec_request_latency_ms Request latency percentiles over the last requests.",
                  "# TYPE edgec_request_latency_ms gauge"]
        for name, lat in s["latency"].items():
            for q in ("p50", "p95", "p99"):
                if lat[f"{q}_ms"] is not None:
                    lines.append(f'edgec_request_latency_ms{{model="{name}",quantile="{q}"}} {lat[q + "_ms"]:.4f}')
        lines += ["# TYPE edgec_batches_total counter"]
        for name, b in s["batchers"].items():
            lines.append(f'edgec_batches_total{{model="{name}"}} {b["stats"]["batches"]}')
        return "\n".join(lines) + "\n"

    def close(self, drain: bool = True) -> None:
        for b in self.batchers.values():
            b.close(drain=drain)


# The header numpy writes for a plain C-order array; anything else goes through np.load.
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), *\}\s*")


def _load_npy(body: bytes) -> np.ndarray:
    """An ``.npy`` body as an array (read-only view, no copy; never unpickles).

    ``np.load`` parses the header with ``ast.literal_eval`` (~30 µs, more than a small
    CNN's run); the header of a plain array is matched here instead.
    """
    if body[:8] == b"\x93NUMPY\x01\x00" and len(body) >= 10:
        end = 10 + int.from_bytes(body[8:10], "little")
        match = _NPY_HEADER.fullmatch(body[10:end].decode("latin-1"))
        if match:
            dtype = np.dtype(match.group(1))
            shape = tuple(int(d) for d in match.group(2).split(",") if d.strip())
            count = math.prod(shape)
            if dtype.kind in "biuf" and len(body) - end == count * dtype.itemsize:
                return np.frombuffer(body, dtype, count=count, offset=end).reshape(shape)
    return np.load(io.BytesIO(body), allow_pickle=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    """One array as an ``.npy`` file (format 1.0)."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # (which would also turn a 0-d array into 1-d)
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(array.dtype),
                                                                       tuple(array.shape))
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin-1") + array.tobytes()


def _decode(body: bytes, content_type: str, model: Any) -> dict[str, np.ndarray]:
    """Request body -> arrays keyed by input name, in the dtypes the model takes from callers."""
    ctype = content_type.split(";")[0].strip().lower()
    specs = {t.name: t for t in model.inputs}
    if ctype in ("application/x-npy", "application/octet-stream"):
        try:
            array = _load_npy(body)
        except Exception as exc:
            raise InputError(f"body is not a .npy array: {exc}") from None
        if len(specs) != 1:
            raise InputError(f"this model takes {len(specs)} inputs ({', '.join(specs)}): send an .npz or JSON")
        return {next(iter(specs)): array}
    if ctype in ("application/x-npz", "application/zip"):
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise InputError(f"body is not an .npz archive: {exc}") from None
    if ctype in ("application/json", ""):
        try:
            data = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise InputError(f"body is not JSON: {exc}") from None
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if inputs is None:
            raise InputError('JSON body must be {"inputs": {"<input name>": [[...]]}} (or a list for one input)')
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise InputError(f"this model takes inputs {', '.join(specs)}: key them by name")
            inputs = {next(iter(specs)): inputs}
        feeds = {}
        for key, value in inputs.items():
            spec = specs.get(key)
            floats = spec is None or spec.dtype.startswith("float") or spec.quantization is not None
            try:
                feeds[key] = np.asarray(value, dtype=np.float32 if floats else np.int64)
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {key} is not a rectangular array of numbers: {exc}") from None
        return feeds
    raise InputError(f"unsupported Content-Type {content_type!r}: use application/json, application/x-npy "
                     "or application/x-npz")


def _encode_npz(outputs: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **outputs)
    return buf.getvalue()


@dataclass
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class _Response:
    status: int
    body: bytes
    ctype: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(data).encode(), "application/json", headers or {})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    return _json(status, {"error": message}, headers)


class _HTTPError(Exception):
    """A request that cannot be parsed; the connection closes after the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection(asyncio.Protocol):
    """One client connection: parses requests in order and answers each in turn."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered; later ones wait in the buffer
        self.closed = False
        self.discard = 0  # bytes of an oversized body still to drop
        self.head: tuple[_Request, int, bool] | None = None  # parsed head waiting for its body

    # -- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.discard:
            dropped = min(self.discard, len(data))
            self.discard -= dropped
            if not self.discard:
                self._close()
            return
        self.buffer += data
        if self.busy and len(self.buffer) > MAX_HEADER_BYTES + self.server.max_body:
            self.transport.pause_reading()  # a client pipelining faster than we answer
        self._next()

    # -- requests ---------------------------------------------------------------------------
    def _next(self) -> None:
        while not self.busy and not self.closed and self.discard == 0:
            try:
                request = self._parse()
            except _HTTPError as exc:
                self._write(_error(exc.status, str(exc)), close=True)
                return
            if request is None:
                return
            self.busy = True
            self.server._inflight += 1
            self.server._loop.create_task(self._answer(request))

    def _parse(self) -> _Request | None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    raise _HTTPError(431, f"request headers over {MAX_HEADER_BYTES} bytes")
                return None
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise _HTTPError(400, f"malformed request line {lines[0][:80]!r}")
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if not sep:
                    raise _HTTPError(400, f"malformed header line {line[:80]!r}")
                headers[key.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise _HTTPError(411, "chunked request bodies are not supported: send Content-Length")
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                raise _HTTPError(400, f"bad Content-Length {headers.get('content-length')!r}")
            connection = headers.get("connection", "").lower()
            keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
            path, _, query = target.partition("?")
            request = _Request(method, path, query, headers)
            if length > self.server.max_body:
                self._refuse_body(length, expecting="100-continue" in headers.get("expect", "").lower())
                return None
            if length and "100-continue" in headers.get("expect", "").lower() and len(self.buffer) < length:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.head = (request, length, keep)
        request, length, keep = self.head
        if len(self.buffer) < length:
            return None
        self.head = None
        request.body = bytes(self.buffer[:length])
        del self.buffer[:length]
        request.headers["connection"] = "keep-alive" if keep else "close"
        return request

    def _refuse_body(self, length: int, expecting: bool) -> None:
        """413 now; drop the body the client still sends (unless it waits for 100-continue)."""
        message = f"body of {length} bytes is over the {self.server.max_body} byte limit"
        self._write(_error(413, message), close=expecting or length > DRAIN_LIMIT)
        if not expecting and length <= DRAIN_LIMIT:
            have = min(len(self.buffer), length)
            del self.buffer[:have]
            self.discard = length - have
            if not self.discard:
                self._close()

    async def _answer(self, request: _Request) -> None:
        try:
            response = await self.server._route(request)
        except Exception as exc:  # nothing a request does may take the server down
            log.exception("%s %s failed", request.method, request.path)
            response = _error(500, f"internal error: {exc}")
        finally:
            self.server._inflight -= 1
        if self.closed:
            return  # the client went away while its request ran
        self._write(response, close=request.headers["connection"] == "close" or self.server._stopping)
        self.busy = False
        if not self.closed:
            self.transport.resume_reading()
            self._next()

    def _write(self, response: _Response, *, close: bool = False) -> None:
        if self.closed:
            return
        phrase = HTTPStatus(response.status).phrase
        head = [f"HTTP/1.1 {response.status} {phrase}", f"Content-Type: {response.ctype}",
                f"Content-Length: {len(response.body)}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        if close:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        if close and not self.discard:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.transport.close()  # sends what is buffered first


class Server:
    """The HTTP API on an asyncio event loop.

    ``start()`` runs it in a background thread; ``serve_forever()`` in the calling one.

    Example:
        >>> server = Server(ServeConfig.from_toml("runtime.toml")).start()
        >>> server.url
        'http://127.0.0.1:8080'
        >>> server.stop()

    Raises:
        OSError: The address cannot be bound (port in use, no such interface).
    """

    def __init__(self, config: ServeConfig, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime(config)
        # Before binding: a spool that cannot be opened fails here with nothing to undo.
        self.telemetry = Telemetry(config.telemetry, self.runtime) if config.telemetry is not None else None
        self.max_body = int(config.max_request_mb * 2**20)
        self._loop = asyncio.new_event_loop()
        # Slow work (reloads, cold loads, decoding large bodies) runs here, off the loop.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="edgec-http")
        self._connections: set[_Connection] = set()
        self._inflight = 0
        self._stopping = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        try:
            self._server = self._loop.run_until_complete(self._loop.create_server(
                lambda: _Connection(self), config.host, config.port, backlog=128, reuse_address=True))
        except OSError:
            self._loop.close()
            self._pool.shutdown()
            self.runtime.close(drain=False)
            if self.telemetry is not None:
                self.telemetry.publisher.spool.close()
            raise
        self.address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> Server:
        if self.telemetry is not None:
            self.telemetry.start()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgec-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (``KeyboardInterrupt``), then call :meth:`stop`."""
        if self.telemetry is not None:
            self.telemetry.start()
        self._loop.run_forever()

    def stop(self, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (``drain``), then close everything."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None and self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._shutdown(drain, timeout_s), self._loop)
            try:
                done.result(timeout_s + 5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
        else:
            self._loop.run_until_complete(self._shutdown(drain, timeout_s))
        self._loop.close()
        self._pool.shutdown(wait=False)
        if self.telemetry is not None:
            self.telemetry.stop()

    async def _shutdown(self, drain: bool, timeout_s: float) -> None:
        self._stopping = True
        self._server.close()
        until = time.monotonic() + timeout_s
        while drain and self._inflight and time.monotonic() < until:
            await asyncio.sleep(0.01)
        await self._loop.run_in_executor(self._pool, self.runtime.close, drain)
        for conn in list(self._connections):
            conn._close()
        await asyncio.sleep(0)  # let the transports flush and close

    # -- routes -----------------------------------------------------------------------------
    async def _route(self, request: _Request) -> _Response:
        rt = self.runtime
        if self._stopping:
            return _error(503, "the server is shutting down", {"Retry-After": "1"})
        if request.method == "GET":
            path = request.path
            if path == "/health":
                return _json(200, {"status": "ok"})
            if path == "/ready":
                return _json(200 if rt.ready else 503, {"ready": rt.ready, "failed": rt.failed})
            if path == "/v1/models":
                return _json(200, {"models": rt.models()})
            if path == "/v1/stats":
                return _json(200, rt.stats())
            if path == "/metrics":
                return _Response(200, rt.metrics().encode(), "text/plain; version=0.0.4")
            return _error(404, f"no route GET {path}")
        if request.method != "POST":
            return _error(405, f"method {request.method} is not served: use GET or POST", {"Allow": "GET, POST"})
        match = _ROUTE.match(request.path)
        if not match:
            return _error(404, f"no route POST {request.path}")
        name, verb = match.groups()
        try:
            if verb == "reload":
                data = json.loads(request.body) if request.body else {}
                path = data.get("path") if isinstance(data, dict) else None
                entry = await self._loop.run_in_executor(self._pool, rt.reload, name, path)
                return _json(200, {"reloaded": entry})
            return await self._predict(name, request)
        except KeyError:
            return _error(404, f"unknown model {name!r}; serving {', '.join(sorted(rt.batchers)) or 'none'}")
        except InputError as exc:
            return _error(400, str(exc))
        except QueueFullError as exc:
            return _error(429, str(exc), {"Retry-After": f"{max(1, round(exc.retry_after_s))}"})
        except DeadlineError as exc:
            return _error(504, str(exc))
        except EdgecError as exc:  # BundleError and kin: the model, not the request
            return _error(503 if verb == "predict" else 409, str(exc))
        except ValueError as exc:  # includes json.JSONDecodeError
            return _error(400, f"bad request: {exc}")

    async def _predict(self, name: str, request: _Request) -> _Response:
        rt = self.runtime
        if name not in rt.batchers:
            raise KeyError(name)
        model = rt.cache.peek(name)
        if model is None:  # evicted or never loaded: load off the loop
            model = await self._loop.run_in_executor(self._pool, rt.cache.get, name)
        ctype = request.headers.get("content-type", "application/json")
        if len(request.body) > _DECODE_INLINE_BYTES:
            feeds = await self._loop.run_in_executor(self._pool, _decode, request.body, ctype, model)
        else:
            feeds = _decode(request.body, ctype, model)
        params = dict(p.split("=", 1) for p in request.query.split("&") if "=" in p)
        deadline = request.headers.get("x-deadline-ms") or params.get("deadline_ms")
        deadline_s = float(deadline) / 1000 if deadline else None
        timeout = deadline_s if deadline_s is not None else self.config.request_timeout_s
        outputs = await self._wait(rt.submit(name, feeds, deadline_s=deadline_s), timeout + 1.0,
                                   f"model {name} did not answer within {timeout:g}s")
        accept = request.headers.get("accept", "")
        if "application/x-npz" in accept:
            return _Response(200, _encode_npz(outputs), "application/x-npz")
        if "application/x-npy" in accept and len(outputs) == 1:
            return _Response(200, _npy_bytes(next(iter(outputs.values()))), "application/x-npy")
        return _json(200, {"model": name, "outputs": {k: v.tolist() for k, v in outputs.items()}})

    async def _wait(self, future: Future, timeout_s: float, message: str) -> Any:
        """Await a batcher's future from the loop (lighter than wrap_future + wait_for)."""
        loop = self._loop
        waiter = loop.create_future()

        def settle(f: Future) -> None:
            if waiter.done():
                return
            if f.cancelled():
                waiter.set_exception(DeadlineError(message))
            elif f.exception() is not None:
                waiter.set_exception(f.exception())
            else:
                waiter.set_result(f.result())

        def expire() -> None:
            if not waiter.done():
                future.cancel()  # still queued: it will not run
                waiter.set_exception(DeadlineError(message))

        future.add_done_callback(lambda f: loop.call_soon_threadsafe(settle, f))
        timer = loop.call_later(timeout_s, expire)
        try:
            return await waiter
        finally:
            timer.cancel()
