"""The local API: ``edgec serve`` over HTTP on loopback (standard library only).

Endpoints: ``GET /health``, ``GET /ready``, ``GET /v1/models``,
``POST /v1/models/{name}/predict`` (JSON, or ``.npy``/``.npz`` bodies), ``POST
/v1/models/{name}/reload``, ``GET /metrics`` (Prometheus text), ``GET /v1/stats``. Errors are
JSON ``{"error": message}`` with a status that says whose fault it is.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, EdgecError, InputError, ValidationError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from .batcher import Batcher, BatcherConfig, DeadlineError, QueueFullError
from .cache import ModelCache, available_bytes, rss_bytes

log = logging.getLogger("edgec.runtime")
# Oversized bodies up to this size are read and dropped before the 413 goes out.
DRAIN_LIMIT = 64 * 2**20
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
        self._lock = threading.Lock()
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
        if self.cache.min_available_bytes is None:
            return False
        avail = available_bytes()
        return avail is not None and avail < self.cache.min_available_bytes

    def alert(self, message: str, kind: str = "memory_pressure") -> None:
        log.warning(message)
        self.alerts.append({"time": time.time(), "kind": kind, "message": message})

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
        future = self.batchers[name].submit(feeds, deadline_s=deadline_s)
        timeout = deadline_s if deadline_s is not None else self.config.request_timeout_s
        try:
            result = future.result(timeout=timeout + 1.0)
        except TimeoutError:
            raise DeadlineError(f"model {name} did not answer within {timeout:g}s") from None
        except Exception:
            self.latency[name].errors += 1
            raise
        self.latency[name].add(time.perf_counter() - started)
        return result

    def reload(self, name: str, path: str | Path | None = None) -> dict[str, Any]:
        entry = self.cache.reload(name, path)
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


def _decode(body: bytes, content_type: str, model: Any) -> dict[str, np.ndarray]:
    """Request body -> arrays keyed by input name, in the dtypes the model takes from callers."""
    ctype = content_type.split(";")[0].strip().lower()
    specs = {t.name: t for t in model.inputs}
    if ctype in ("application/x-npy", "application/octet-stream"):
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
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


class _Handler(BaseHTTPRequestHandler):
    runtime: Runtime
    max_body: int
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    # Headers and body go out in separate writes; with Nagle's algorithm on, a keep-alive
    # client's delayed ACK then stalls every response by ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: Any) -> None:  # route through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def do_GET(self) -> None:  # noqa: N802
        rt = self.runtime
        path = self.path.split("?")[0]
        try:
            if path == "/health":
                self._json(200, {"status": "ok"})
            elif path == "/ready":
                self._json(200 if rt.ready else 503, {"ready": rt.ready, "failed": rt.failed})
            elif path == "/v1/models":
                self._json(200, {"models": rt.models()})
            elif path == "/v1/stats":
                self._json(200, rt.stats())
            elif path == "/metrics":
                self._send(200, rt.metrics().encode(), "text/plain; version=0.0.4")
            else:
                self._error(404, f"no route GET {path}")
        except Exception as exc:  # nothing a request does may take the server down
            log.exception("GET %s failed", path)
            self._error(500, f"internal error: {exc}")

    def do_POST(self) -> None:  # noqa: N802
        rt = self.runtime
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_body:
            # Read (and drop) a moderately oversized body so the client gets to read the 413
            # instead of a broken pipe; past the drain limit, just answer and hang up.
            if length <= DRAIN_LIMIT:
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            self.close_connection = True
            self._error(413, f"body of {length} bytes is over the {self.max_body} byte limit")
            return
        body = self.rfile.read(length) if length else b""
        match = _ROUTE.match(path)
        if not match:
            self._error(404, f"no route POST {path}")
            return
        name, verb = match.groups()
        try:
            if verb == "reload":
                data = json.loads(body or b"{}") if body else {}
                entry = rt.reload(name, data.get("path") if isinstance(data, dict) else None)
                self._json(200, {"reloaded": entry})
                return
            if name not in rt.batchers:
                self._error(404, f"unknown model {name!r}; serving {', '.join(sorted(rt.batchers)) or 'none'}")
                return
            model = rt.cache.get(name)
            feeds = _decode(body, self.headers.get("Content-Type", "application/json"), model)
            deadline = self.headers.get("X-Deadline-Ms") or dict(
                p.split("=", 1) for p in query.split("&") if "=" in p).get("deadline_ms")
            outputs = rt.predict(name, feeds, deadline_s=float(deadline) / 1000 if deadline else None)
            if "application/x-npz" in (self.headers.get("Accept") or ""):
                self._send(200, _encode_npz(outputs), "application/x-npz")
            else:
                self._json(200, {"model": name, "outputs": {k: v.tolist() for k, v in outputs.items()}})
        except KeyError:
            self._error(404, f"unknown model {name!r}")
        except InputError as exc:
            self._error(400, str(exc))
        except QueueFullError as exc:
            self._error(429, str(exc), {"Retry-After": f"{max(1, round(exc.retry_after_s))}"})
        except DeadlineError as exc:
            self._error(504, str(exc))
        except (BundleError, EdgecError) as exc:
            self._error(503 if verb == "predict" else 409, str(exc))
        except (ValueError, json.JSONDecodeError) as exc:
            self._error(400, f"bad request: {exc}")
        except Exception as exc:
            log.exception("POST %s failed", path)
            self._error(500, f"internal error: {exc}")


class _HTTPServer(ThreadingHTTPServer):
    # The standard library listens with a backlog of 5: a burst of clients beyond that
    # gets connection resets before a thread can accept them.
    request_queue_size = 128


class Server:
    """The HTTP server in a background thread.

    Example:
        >>> server = Server(ServeConfig.from_toml("runtime.toml")).start()
        >>> server.url
        'http://127.0.0.1:8080'
        >>> server.stop()
    """

    def __init__(self, config: ServeConfig, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime(config)
        handler = type("Handler", (_Handler,), {"runtime": self.runtime,
                                               "max_body": int(config.max_request_mb * 2**20)})
        self.httpd = _HTTPServer((config.host, config.port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="edgec-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self, drain: bool = True) -> None:
        """Stop accepting connections, finish queued requests, then close."""
        self.httpd.shutdown()
        self.runtime.close(drain=drain)
        self.httpd.server_close()
