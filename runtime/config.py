"""Everything a board is told in ``runtime.toml``: models, memory, batching, HTTP limits; the
``[telemetry]`` and ``[fleet]`` tables are in :mod:`.fleet_config`.

Each table is a frozen dataclass that checks its values when built and raises
:class:`~edgec.errors.ValidationError` naming the key and what it takes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgecError, ValidationError
from .fleet_config import FleetConfig, TelemetryConfig, known_keys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class BatcherConfig:
    """Batching limits.

    Attributes:
        max_batch_size: Most samples run together.
        max_queue_delay_ms: Longest wait, once the model is free, for more requests to join a batch
            that is not full. 0 (the default): no waiting; requests that arrived while the
            model ran the previous batch make up the next one, so a lone client pays no delay
            and 16 clients still share batches (measured: as many requests/s as with 2 ms).
        max_queue: Most requests waiting.
        max_bytes: Most input bytes waiting.
    """

    max_batch_size: int = 8
    max_queue_delay_ms: float = 0.0
    max_queue: int = 64
    max_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_bytes < 1 or self.max_queue_delay_ms < 0:
            raise ValidationError("[batcher] limits must be positive: max_batch_size, max_queue and max_bytes at "
                                  "least 1, max_queue_delay_ms 0 or more")



@dataclass(frozen=True)
class ModelConfig:
    """One bundle to serve."""

    name: str
    path: Path
    pinned: bool = False
    preload: bool = True


@dataclass(frozen=True)
class HttpConfig:
    """The ``[http]`` table: the limits every client connection lives within.

    The defaults let a Raspberry Pi survive clients that misbehave: a connection that sends
    no complete request head within ``header_timeout_s``, or no complete body within
    ``body_timeout_s``, is answered 408 and closed; one idle for ``idle_timeout_s`` after an
    answer is closed; past ``max_connections`` open connections, or ``max_pending_mb`` of
    request bodies held at once, requests get 503.

    Attributes:
        max_header_kb: Largest request head (request line and headers); larger get 431.
        max_connections: Most connections served at once.
        idle_timeout_s: How long a keep-alive connection may wait for its next request.
        header_timeout_s: How long a client may take to send a request's head.
        body_timeout_s: How long a client may take to send a request's body.
        max_pending_mb: Most request-body bytes the server holds at once, over all connections
            (bodies being received, decoded or run); a request that would pass it gets 503.
    """

    max_header_kb: float = 64.0
    max_connections: int = 128
    idle_timeout_s: float = 15.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_pending_mb: float = 64.0

    def __post_init__(self) -> None:
        for key in ("max_header_kb", "idle_timeout_s", "header_timeout_s", "body_timeout_s", "max_pending_mb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86_400:
                raise ValidationError(f"[http] {key} must be a number above 0, got {value!r}")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int) \
                or not 1 <= self.max_connections <= 65_536:
            raise ValidationError(f"[http] max_connections must be a whole number from 1 to 65536, "
                                  f"got {self.max_connections!r}")


def _check(table: str, config: Any, rules: tuple[tuple[str, Any, str], ...]) -> None:
    """Raise ``[table] key must be <what>, got <value>`` for the first value its rule refuses."""
    for key, ok, what in rules:
        value = getattr(config, key)
        if not ok(value):
            raise ValidationError(f"[{table}] {key} must be {what}, got {value!r}")


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _whole(low: int, high: Any) -> Any:
    return lambda value: isinstance(value, int) and low <= value <= high


@dataclass(frozen=True)
class DriftConfig:
    """``[drift]``: each model's served data against its bundle's held-out data (``drift.json``).

    Attributes:
        enabled: Keep the statistics (on by default: a bundle without ``drift.json`` is skipped).
        window: The last served samples compared with the reference.
        min_samples: Samples in the window before a score is given.
        threshold: The drift score (population stability index) at which the ``drift`` alert is raised.
        cpu_budget: Most of one core the statistics may take; requests beyond it are not sampled.
    """

    enabled: bool = True
    window: int = 500
    min_samples: int = 200
    threshold: float = 0.25
    cpu_budget: float = 0.02

    def __post_init__(self) -> None:
        _check("drift", self, (
            ("enabled", _flag, "true or false"),
            ("window", _whole(50, 100_000), "a whole number from 50 to 100000"),
            ("min_samples", _whole(1, self.window), f"from 1 to window ({self.window})"),
            ("threshold", lambda v: _number(v) and v > 0, "a number above 0 (0.25 is a real shift)"),
            ("cpu_budget", lambda v: _number(v) and 0 < v <= 1, "above 0 and at most 1 (a share of one core)"),
        ))


@dataclass(frozen=True)
class CaptureConfig:
    """``[capture]``: sampled served inputs with the model's answers, kept on the board (off by default).

    Attributes:
        enabled: Keep samples (nothing is ever sent anywhere: an admin fetches them).
        folder: Where (relative to runtime.toml), one sub-folder per model.
        max_samples: Samples kept per model; the oldest go first.
        max_mb: Disk kept per model; the oldest go first.
        per_minute: Most samples written per minute, over all models.
        low_confidence: Answers less confident than this (a classifier's top class) are always kept.
        keep_share: The share of the other samples kept (ten times as many while drift is alerted).
    """

    enabled: bool = False
    folder: Path = Path("capture")
    max_samples: int = 1000
    max_mb: float = 32.0
    per_minute: int = 30
    low_confidence: float = 0.5
    keep_share: float = 0.01

    def __post_init__(self) -> None:
        _check("capture", self, (
            ("enabled", _flag, "true or false"),
            ("max_samples", _whole(1, 1_000_000), "a whole number from 1 to 1000000"),
            ("per_minute", _whole(1, 60_000), "a whole number from 1 to 60000"),
            ("max_mb", lambda v: _number(v) and 0 < v <= 1 << 20, "a number above 0"),
            ("low_confidence", lambda v: _number(v) and 0 <= v <= 1, "from 0 to 1"),
            ("keep_share", lambda v: _number(v) and 0 <= v <= 1, "from 0 to 1"),
        ))


@dataclass(frozen=True)
class MeasureConfig:
    """``[measure]``: candidate models timed on this board for ``edgec convert --measure-on`` (off by default).

    A candidate is loaded, checked on its golden samples and timed in a child process, never in
    the serving one, and removed afterwards; it never replaces what the board serves. Turning this
    on lets whoever holds the admin token run model files of their choice in that child, signed
    or not: keep it for boards that measure, not ones in the field.

    Attributes:
        enabled: Take candidates on ``POST /v1/measure`` (admin token).
        max_mb: Largest candidate upload.
        max_rss_mb: The child is stopped past this much memory (default: ``budget_mb``).
        timeout_s: The child is stopped past this many seconds.
    """

    enabled: bool = False
    max_mb: float = 256.0
    max_rss_mb: float | None = None
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _check("measure", self, (
            ("enabled", _flag, "true or false"),
            ("max_mb", lambda v: _number(v) and 0 < v <= 1 << 20, "a number above 0"),
            ("max_rss_mb", lambda v: v is None or (_number(v) and v > 0), "a number above 0"),
            ("timeout_s", lambda v: _number(v) and 0 < v <= 86_400, "seconds above 0"),
        ))


@dataclass(frozen=True)
class GrpcConfig:
    """``[grpc]``: the Open Inference Protocol over gRPC as well (``pip install 'edgec[grpc]'``; off by default).

    Attributes:
        port: Where to listen (the top-level ``host``); unset: no gRPC. Triton's clients use 8001.
        max_message_mb: Largest request or answer (default: ``max_request_mb``).
        max_concurrent_rpcs: Most calls answered at once; more get RESOURCE_EXHAUSTED.
    """

    port: int | None = None
    max_message_mb: float | None = None
    max_concurrent_rpcs: int = 128

    def __post_init__(self) -> None:
        _check("grpc", self, (
            ("port", lambda v: v is None or (isinstance(v, int) and 0 <= v <= 65_535), "a port from 0 to 65535"),
            ("max_message_mb", lambda v: v is None or (_number(v) and 0 < v <= 4096), "a number of MB above 0"),
            ("max_concurrent_rpcs", _whole(1, 65_536), "a whole number from 1 to 65536"),
        ))


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edgec serve`` needs (the ``runtime.toml`` file).

    Example ``runtime.toml``::

        host = "127.0.0.1"
        port = 8080
        budget_mb = 512            # memory the loaded models may cost together
        min_available_mb = 64      # evict when the board has less free memory than this
        max_request_mb = 16
        isolate = true             # load each bundle in a child process first (crashes stay there)
        admin_token = "..."        # enables POST /v1/models/NAME/reload (Authorization: Bearer ...)
        model_roots = ["build"]    # where reloads may load bundles from (default: the models' parents)
        trusted_keys = ["fleet-key.pub"]  # serve only bundles signed by one of these (edgec sign)
        [http]                     # connection limits (see HttpConfig)
        max_connections = 128
        [batcher]
        max_batch_size = 8
        max_queue_delay_ms = 0
        max_queue = 64
        max_bytes_mb = 64
        [drift]                    # served data against the bundle's held-out data (see DriftConfig)
        threshold = 0.25
        [capture]                  # off by default: sampled inputs kept on the board (see CaptureConfig)
        enabled = true
        [measure]                  # off by default: candidates timed here for convert --measure-on
        enabled = true
        [grpc]                     # off by default: the Open Inference Protocol over gRPC too
        port = 8001
        [[models]]
        name = "digits"
        path = "build/rpi4"
        pinned = true
        [telemetry]                # optional: MQTT (see TelemetryConfig)
        broker = "localhost"
        fleet = "shop"
        interval_s = 10
        [fleet]                    # optional: model updates over MQTT (see FleetConfig)
        groups = ["pi-lab"]
    """

    models: tuple[ModelConfig, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    budget_mb: float = 512.0
    min_available_mb: float | None = None
    max_request_mb: float = 16.0
    threads: int | None = None
    request_timeout_s: float = 30.0
    isolate: bool = True
    admin_token: str | None = None
    model_roots: tuple[Path, ...] = ()
    trusted_keys: tuple[Path, ...] = ()
    http: HttpConfig = field(default_factory=HttpConfig)
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    telemetry: TelemetryConfig | None = None
    fleet: FleetConfig | None = None

    def __post_init__(self) -> None:
        if self.fleet is not None and (self.telemetry is None or not self.telemetry.broker):
            raise ValidationError("[fleet] needs [telemetry] with a broker: updates arrive over MQTT")
        if self.fleet is not None and not self.trusted_keys and self.fleet.allow_unsigned is not True:
            raise ValidationError(
                "[fleet] takes model updates from the broker, so it needs trusted_keys = [\"fleet-key.pub\"] "
                "(edgec keys new; push with --key): without them anyone who can publish on the broker changes "
                "this board's models. To run without signatures anyway, set allow_unsigned = true in [fleet]")
        if not isinstance(self.isolate, bool):
            raise ValidationError(f"isolate must be true or false, got {self.isolate!r}")
        token = self.admin_token
        if token is not None and (not isinstance(token, str) or len(token) < 16 or not token.isprintable()
                                  or " " in token):
            raise ValidationError("admin_token must be a string of at least 16 characters without spaces; make one "
                                  "with: python -c 'import secrets; print(secrets.token_urlsafe())'")

    def roots(self) -> tuple[Path, ...]:
        """The folders reloads may load bundles from (resolved): ``model_roots``, else each model's parent."""
        roots = self.model_roots or tuple(m.path.parent for m in self.models)
        if self.fleet is not None:
            roots = (*roots, self.fleet.store)
        return tuple(dict.fromkeys(r.resolve() for r in roots))

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
        batcher = dict(data.pop("batcher", {}))
        if "max_bytes_mb" in batcher:
            batcher["max_bytes"] = int(float(batcher.pop("max_bytes_mb")) * 2**20)
        known_keys(BatcherConfig, batcher, "[batcher]")
        http = data.pop("http", {})
        if not isinstance(http, dict):
            raise ValidationError("[http] must be a table")
        known_keys(HttpConfig, http, "[http]")
        data["http"] = HttpConfig(**http)
        for key, table in (("drift", DriftConfig), ("measure", MeasureConfig), ("grpc", GrpcConfig)):
            values = data.pop(key, {})
            if not isinstance(values, dict):
                raise ValidationError(f"[{key}] must be a table")
            known_keys(table, values, f"[{key}]")
            data[key] = table(**values)
        capture = dict(data.pop("capture", {})) if isinstance(data.get("capture", {}), dict) else None
        if capture is None:
            raise ValidationError("[capture] must be a table")
        known_keys(CaptureConfig, capture, "[capture]")
        if "folder" in capture:
            if not isinstance(capture["folder"], str) or not capture["folder"]:
                raise ValidationError('[capture] folder must be a path, e.g. folder = "/var/lib/edgec/capture"')
            folder = Path(capture["folder"])
            capture["folder"] = folder if folder.is_absolute() else base / folder
        else:
            capture["folder"] = base / CaptureConfig.folder
        data["capture"] = CaptureConfig(**capture)
        telemetry = data.pop("telemetry", None)
        if telemetry is not None:
            if not isinstance(telemetry, dict):
                raise ValidationError("[telemetry] must be a table")
            data["telemetry"] = TelemetryConfig.from_dict(telemetry, base)
        fleet = data.pop("fleet", None)
        if fleet is not None:
            if not isinstance(fleet, dict):
                raise ValidationError("[fleet] must be a table")
            data["fleet"] = FleetConfig.from_dict(fleet, base)
        models = []
        for i, m in enumerate(data.pop("models", [])):
            extra = sorted(set(m) - {"name", "path", "pinned", "preload"})
            if extra or "name" not in m or "path" not in m:
                raise ValidationError(f"[[models]] entry {i + 1} needs name and path (unknown: {', '.join(extra) or 'none'})")
            p = Path(m["path"])
            models.append(ModelConfig(m["name"], p if p.is_absolute() else base / p, bool(m.get("pinned", False)),
                                      bool(m.get("preload", True))))
        known_keys(cls, data, "config")
        for key, example in (("model_roots", '["/opt/models"]'), ("trusted_keys", '["/etc/edgec/fleet-key.pub"]')):
            paths = data.pop(key, [])
            if not isinstance(paths, list) or not all(isinstance(r, str) and r for r in paths):
                raise ValidationError(f"{key} must be a list of paths, e.g. {key} = {example}")
            data[key] = tuple(Path(r) if Path(r).is_absolute() else base / r for r in paths)
        try:
            return cls(models=tuple(models), batcher=BatcherConfig(**batcher), **data)
        except (TypeError, EdgecError) as exc:
            raise ValidationError(f"bad config: {exc}") from None
