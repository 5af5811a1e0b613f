"""The ``[telemetry]`` and ``[fleet]`` tables of ``runtime.toml``: how a board talks to its fleet over MQTT.

Each table is a frozen dataclass that checks its values when built and raises
:class:`~edgec.errors.ValidationError` naming the key and what it takes.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from .topics import RESERVED, device_topic

NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


MAX_TAGS = 32


def valid_tag(key: Any, value: Any) -> bool:
    """A tag as boards declare it and pushes select by: a name (64 characters at most) and a value (128), each
    letters, digits, ".", "_" or "-"."""
    return (isinstance(key, str) and isinstance(value, str) and len(key) <= 64 and len(value) <= 128
            and bool(NAME.fullmatch(key)) and bool(NAME.fullmatch(value)))


def known_keys(table: type, data: dict[str, Any], name: str) -> None:
    """Refuse keys ``table`` does not have (a typo would otherwise be ignored silently)."""
    unknown = sorted(set(data) - {f.name for f in fields(table)})
    if unknown:
        raise ValidationError(f"unknown {name} key(s): {', '.join(unknown)}")


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
            if not NAME.match(getattr(self, key)):
                raise ValidationError(f"telemetry {key} {getattr(self, key)!r} must be letters, digits, '.', '_' "
                                      "or '-' (it is a topic level)")
        if self.device in RESERVED:
            raise ValidationError(f"telemetry device {self.device!r} is a topic level edgec uses: name the board otherwise")
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
        known_keys(cls, data, "[telemetry]")
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
        tags = {site = "shop-3", hw = "rpi4"}  # what a push's --where selects boards by
    """

    groups: tuple[str, ...] = ()
    store: Path = Path("/var/lib/edgec/bundles")
    watch_requests: int = 50
    watch_s: float = 30.0
    max_failure_rate: float = 0.05
    window: int = 8  # chunks asked for at once while downloading
    allow_unsigned: bool = False
    blob_urls: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tags, dict) or len(self.tags) > MAX_TAGS or not all(
                valid_tag(k, v) for k, v in self.tags.items()):
            raise ValidationError('[fleet] tags must be at most 32 names and values of letters, digits, ".", "_" or '
                                  '"-", e.g. tags = {site = "shop-3", hw = "rpi4"}')
        for group in self.groups:
            if not isinstance(group, str) or not NAME.match(group):
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
        known_keys(cls, data, "[fleet]")
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
