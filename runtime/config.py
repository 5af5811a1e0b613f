"""Everything a board is told in ``runtime.toml``: models, memory, batching, telemetry.

Each table is a frozen dataclass that checks its values when built and raises
:class:`~edgec.errors.ValidationError` naming the key and what it takes.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import EdgecError, ValidationError
from .topics import device_topic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _known(table: type, data: dict[str, Any], name: str) -> None:
    """Refuse keys ``table`` does not have (a typo would otherwise be ignored silently)."""
    unknown = sorted(set(data) - {f.name for f in fields(table)})
    if unknown:
        raise ValidationError(f"unknown {name} key(s): {', '.join(unknown)}")


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
class TelemetryConfig:
    """Where and how to publish (the ``[telemetry]`` table of ``runtime.toml``).

    Attributes:
        broker: Broker host; ``None`` keeps every message in the spool (no network).
        port: Broker port (8883 is usual with TLS).
        fleet, device: Topic levels; the device defaults to the host name.
        client_id: MQTT client id (default ``edgec-<fleet>-<device>``).
        protocol: ``"5"`` (MQTT 5) or ``"3.1.1"``.
        username, password: Broker credentials; ``password_file`` reads the password from a file
            (a container secret) instead of the config.
        tls: Connect with TLS; ``ca_file`` verifies the broker, ``cert_file``/``key_file``
            authenticate the device.
        keepalive_s: MQTT keep-alive.
        reconnect_max_s: Longest wait between reconnect attempts (backoff doubles from 1 s).
        session_expiry_s: How long the broker keeps the device's session, and with it the
            QoS 1 commands sent while the device is offline or restarting; 0 drops them.
            MQTT 3.1.1 has no expiry: above 0, the broker keeps them until the device is back.
        interval_s: Seconds between telemetry messages.
        spool: The SQLite spool file.
        spool_max_messages, spool_max_mb: Spool bounds; the oldest messages go first.
        window: Most messages handed to the broker and not yet acknowledged.
        latency_alert_ms: Raise a ``latency`` event when a model's p95 is above this.
        homeassistant: Publish Home Assistant MQTT discovery (retained, at every connect) so
            the board's figures appear as HA sensors with no set-up.
        discovery_prefix: Home Assistant's discovery prefix.
    """

    broker: str | None = None
    port: int = 1883
    fleet: str = "default"
    device: str = ""
    client_id: str | None = None
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 30
    reconnect_max_s: float = 30.0
    session_expiry_s: int = 3600
    interval_s: float = 10.0
    spool: Path = Path("edgec-spool.sqlite")
    spool_max_messages: int = 100_000
    spool_max_mb: float = 64.0
    window: int = 256
    latency_alert_ms: float | None = None
    homeassistant: bool = True
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        if not self.device:
            object.__setattr__(self, "device", re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname()) or "device")
        for key in ("fleet", "device"):
            if not _NAME.match(getattr(self, key)):
                raise ValidationError(f"telemetry {key} {getattr(self, key)!r} must be letters, digits, '.', '_' "
                                      "or '-' (it is a topic level)")
        if self.protocol not in ("5", "3.1.1"):
            raise ValidationError(f"telemetry protocol {self.protocol!r} must be \"5\" or \"3.1.1\"")
        if not 0.1 <= self.interval_s <= 86_400:
            raise ValidationError(f"telemetry interval_s {self.interval_s} must be between 0.1 and 86400")
        if (not isinstance(self.session_expiry_s, int) or isinstance(self.session_expiry_s, bool)
                or not 0 <= self.session_expiry_s <= 2**32 - 1):
            raise ValidationError(f"telemetry session_expiry_s {self.session_expiry_s!r} must be whole seconds "
                                  "between 0 and 4294967295")
        if self.window < 1 or self.spool_max_messages < 1 or self.spool_max_mb <= 0:
            raise ValidationError("telemetry window and spool limits must be positive")
        if self.password is not None and self.password_file is not None:
            raise ValidationError("telemetry password and password_file: give one")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValidationError("telemetry cert_file and key_file go together")
        if not isinstance(self.homeassistant, bool):
            raise ValidationError(f"telemetry homeassistant {self.homeassistant!r} must be true or false")
        if not self.discovery_prefix or any(c in self.discovery_prefix for c in "+#\0") or \
                self.discovery_prefix.startswith("/") or self.discovery_prefix.endswith("/"):
            raise ValidationError(f"telemetry discovery_prefix {self.discovery_prefix!r} must be a topic prefix "
                                  "such as \"homeassistant\" (no wildcards, no leading or trailing '/')")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> TelemetryConfig:
        """From a TOML table; relative file paths are relative to ``base``.

        Raises:
            ValidationError: Unknown keys or bad values.
        """
        _known(cls, data, "[telemetry]")
        data = dict(data)
        for key in ("spool", "ca_file", "cert_file", "key_file", "password_file"):
            if data.get(key) is not None:
                p = Path(data[key])
                data[key] = p if p.is_absolute() else base / p
                if key != "spool":
                    data[key] = str(data[key])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValidationError(f"bad [telemetry] table: {exc}") from None

    def topic(self, kind: str) -> str:
        """This device's topic for ``kind``: ``edgec/<fleet>/<device>/<kind>``."""
        return device_topic(self.fleet, self.device, kind)


@dataclass(frozen=True)
class FleetConfig:
    """Model updates from the fleet (the ``[fleet]`` table; needs ``[telemetry]`` for the broker).

    Example::

        [fleet]
        groups = ["pi-lab"]                  # desired versions for these groups apply to this board
        store = "/var/lib/edgec/bundles"     # downloaded versions, side by side (kept: current + previous)
        watch_requests = 50                  # after a switch, watch this many requests ...
        watch_s = 30                         # ... or this long, whichever comes first,
        max_failure_rate = 0.05              # and roll back when more of them fail than this
        allow_unsigned = false               # true: take unsigned desired states (no trusted_keys): unsafe
        blob_urls = ["https://cdn.example.com/edgec/"]  # bundles by URL only from under these (optional)
    """

    groups: tuple[str, ...] = ()
    store: Path = Path("/var/lib/edgec/bundles")
    watch_requests: int = 50
    watch_s: float = 30.0
    max_failure_rate: float = 0.05
    window: int = 8  # chunks asked for at once while downloading
    allow_unsigned: bool = False
    blob_urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for group in self.groups:
            if not isinstance(group, str) or not _NAME.match(group):
                raise ValidationError(f"[fleet] group {group!r} must be letters, digits, '.', '_' or '-'")
        for url in self.blob_urls:
            if not isinstance(url, str) or not re.fullmatch(r"https?://[^/@\s]+/\S*", url) or not url.endswith("/"):
                raise ValidationError(f"[fleet] blob_urls entry {url!r} must be an http(s) URL ending in '/', "
                                      'e.g. "https://cdn.example.com/edgec/"')
        if self.watch_requests < 0 or self.watch_s < 0 or not 0 <= self.max_failure_rate <= 1 or self.window < 1:
            raise ValidationError("[fleet] watch_requests and watch_s must be >= 0, max_failure_rate within 0..1, "
                                  "window >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> FleetConfig:
        _known(cls, data, "[fleet]")
        data = dict(data)
        for key in ("groups", "blob_urls"):
            if key in data:
                if not isinstance(data[key], list):
                    raise ValidationError(f'[fleet] {key} must be a list, e.g. {key} = ["..."]')
                data[key] = tuple(data[key])
        if "store" in data:
            store = Path(str(data["store"]))
            data["store"] = store if store.is_absolute() else base / store
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValidationError(f"bad [fleet] table: {exc}") from None


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
        _known(BatcherConfig, batcher, "[batcher]")
        http = data.pop("http", {})
        if not isinstance(http, dict):
            raise ValidationError("[http] must be a table")
        _known(HttpConfig, http, "[http]")
        data["http"] = HttpConfig(**http)
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
        _known(cls, data, "config")
        for key, example in (("model_roots", '["/opt/models"]'), ("trusted_keys", '["/etc/edgec/fleet-key.pub"]')):
            paths = data.pop(key, [])
            if not isinstance(paths, list) or not all(isinstance(r, str) and r for r in paths):
                raise ValidationError(f"{key} must be a list of paths, e.g. {key} = {example}")
            data[key] = tuple(Path(r) if Path(r).is_absolute() else base / r for r in paths)
        try:
            return cls(models=tuple(models), batcher=BatcherConfig(**batcher), **data)
        except (TypeError, EdgecError) as exc:
            raise ValidationError(f"bad config: {exc}") from None
