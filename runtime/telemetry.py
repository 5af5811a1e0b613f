"""Telemetry and remote control over MQTT that lose nothing when the broker goes away.

Topics (``<fleet>`` and ``<device>`` from the config; every payload is a JSON object with
``"schema": 1``)::

    edgec/<fleet>/<device>/status       retained; "online" at connect, "offline" at stop and
                                        as the Last Will when the device drops off
    edgec/<fleet>/<device>/telemetry    metrics every ``interval_s`` (and on the stats command)
    edgec/<fleet>/<device>/events       alerts: memory_pressure, model_load_failure, latency
    edgec/<fleet>/<device>/cmd/<verb>   commands to the device: reload, stats, interval
    edgec/<fleet>/<device>/cmd-result   one answer per command, ok or with an error

Telemetry, events and command results are QoS 1 and go through a :class:`Spool` first:
they are deleted from it only once the broker acknowledges them, so a broker outage or a
restart of the process loses nothing (a message in flight at that moment may arrive twice,
as QoS 1 allows; its ``seq`` tells the copies apart). Each carries ``seq``, increasing per
device across restarts, so a dashboard can spot gaps and duplicates.

The device keeps a persistent MQTT session (``session_expiry_s``), so QoS 1 commands sent
while it is offline or restarting wait at the broker and arrive when it is back.

Only the standard library, paho-mqtt and (optionally) psutil are imported.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import EdgecError, MissingDependencyError, ValidationError
from .spool import Spool, Spooled

log = logging.getLogger("edgec.telemetry")
SCHEMA = 1
VERBS = ("reload", "stats", "interval")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def topic(fleet: str, device: str, kind: str) -> str:
    """``edgec/<fleet>/<device>/<kind>``."""
    return f"edgec/{fleet}/{device}/{kind}"


@dataclass(frozen=True)
class TelemetryConfig:
    """Where and how to publish (the ``[telemetry]`` table of ``runtime.toml``).

    Attributes:
        broker: Broker host; ``None`` keeps every message in the spool (no network).
        port: Broker port (8883 is usual with TLS).
        fleet, device: Topic levels; the device defaults to the host name.
        client_id: MQTT client id (default ``edgec-<fleet>-<device>``).
        protocol: ``"5"`` (MQTT 5) or ``"3.1.1"``.
        username, password: Broker credentials.
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
    """

    broker: str | None = None
    port: int = 1883
    fleet: str = "default"
    device: str = ""
    client_id: str | None = None
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
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
        if (self.cert_file is None) != (self.key_file is None):
            raise ValidationError("telemetry cert_file and key_file go together")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> TelemetryConfig:
        """From a TOML table; relative file paths are relative to ``base``.

        Raises:
            ValidationError: Unknown keys or bad values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"unknown [telemetry] key(s): {', '.join(unknown)}")
        data = dict(data)
        for key in ("spool", "ca_file", "cert_file", "key_file"):
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
        return topic(self.fleet, self.device, kind)


def paho_client() -> Any:
    """``paho.mqtt.client``, or a clear error naming the extra that installs it."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MissingDependencyError("paho-mqtt", "runtime", "to publish telemetry") from None
    return mqtt


def _wire(message: Spooled) -> bytes:
    """The payload as sent: JSON objects get their ``seq`` first."""
    if message.payload[:1] == b"{" and len(message.payload) > 2:
        return b'{"seq":%d,' % message.seq + message.payload[1:]
    return message.payload


class Publisher:
    """Store-and-forward MQTT publishing with automatic reconnect.

    Messages go to the spool first; a sender thread hands them to paho-mqtt in order while
    connected, at most ``window`` unacknowledged at a time, and deletes each from the spool
    when its PUBACK arrives. paho resends what was in flight after a reconnect; after a
    restart the spool resends whatever was never acknowledged.

    Args:
        config: Broker, identity and spool settings.
        on_message: Called as ``on_message(topic, payload)`` for messages on subscribed
            topics (from paho's network thread: hand work off, do not block).
        subscriptions: Topic filters to subscribe to (QoS 1) on every connect.
        status: Retained payloads for ``status``: published at connect, and at stop (the
            second also as the Last Will).
    """

    def __init__(self, config: TelemetryConfig, *, on_message: Any = None, subscriptions: tuple[str, ...] = (),
                 status: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        self.config = config
        self._on_message = on_message
        self._subscriptions = subscriptions
        self._status = status
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._acked: deque[int] = deque()  # mids from paho's thread; appends are atomic
        self._inflight: dict[int, int] = {}  # mid -> seq, owned by the sender thread
        self._last_handed = 0
        self.sent = 0
        self.acknowledged = 0
        self.connects = 0
        self.client = None
        self._session: dict[str, Any] = {}  # connect_async's session arguments (MQTT 5)
        self._sender = threading.Thread(target=self._send_loop, name="edgec-telemetry-send", daemon=True)
        if config.broker:
            self.client = self._make_client()  # bad TLS files fail here, before the spool is opened
        self.spool = Spool(config.spool, max_messages=config.spool_max_messages,
                           max_bytes=int(config.spool_max_mb * 2**20))

    def _make_client(self) -> Any:
        mqtt = paho_client()
        cfg = self.config
        v5, persistent = cfg.protocol == "5", cfg.session_expiry_s > 0
        # MQTT 5 sets the session's life in CONNECT (used by start); 3.1.1 in the client.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"edgec-{cfg.fleet}-{cfg.device}",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             **({} if v5 else {"clean_session": not persistent}))
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = cfg.session_expiry_s
            # Resume the session from the very first connect: commands sent while this
            # process was down are waiting in it.
            self._session = {"clean_start": not persistent, "properties": properties}
        client.max_inflight_messages_set(cfg.window)
        client.reconnect_delay_set(1, max(1, int(cfg.reconnect_max_s)))
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls or cfg.ca_file or cfg.cert_file:
            try:
                client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as exc:
                raise ValidationError(f"telemetry TLS files cannot be used: {exc}") from None
        if self._status is not None:
            client.will_set(cfg.topic("status"), json.dumps(self._status[1]), qos=1, retain=True)
        client.on_connect = self._connected_cb
        client.on_disconnect = self._disconnected_cb
        client.on_publish = self._published_cb
        client.on_message = self._message_cb
        return client

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Publisher:
        if self.client is not None:
            cfg = self.config
            self.client.connect_async(cfg.broker, cfg.port, keepalive=cfg.keepalive_s, **self._session)
            self.client.loop_start()  # connects, reconnects with backoff, runs callbacks
        self._sender.start()
        return self

    def stop(self, flush_s: float = 5.0) -> None:
        """Wait up to ``flush_s`` for the spool to drain, mark the device offline, disconnect.

        What is not acknowledged by then stays in the spool for the next start.
        """
        until = time.monotonic() + flush_s
        while self.client is not None and self._connected.is_set() and len(self.spool) and time.monotonic() < until:
            self._wake.set()
            time.sleep(0.02)
        self._stopping = True
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(5)
        if self.client is not None:
            if self._connected.is_set() and self._status is not None:
                info = self.client.publish(self.config.topic("status"), json.dumps(self._status[1]), qos=1, retain=True)
                try:
                    info.wait_for_publish(2)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
            self.client.loop_stop()
        self._ack_drained()
        self.spool.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- publishing -------------------------------------------------------------------------
    def publish(self, topic_name: str, payload: dict[str, Any] | bytes, *, retain: bool = False) -> int:
        """Spool one QoS 1 message and wake the sender; returns its ``seq``."""
        body = json.dumps(payload, separators=(",", ":")).encode() if isinstance(payload, dict) else payload
        seq = self.spool.put(topic_name, body, qos=1, retain=retain)
        self._wake.set()
        return seq

    def _send_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(0.5)
            self._wake.clear()
            self._ack_drained()
            if self.client is None or not self._connected.is_set():
                continue
            room = self.config.window - len(self._inflight)
            while room > 0 and self._connected.is_set() and not self._stopping:
                batch = self.spool.after(self._last_handed, min(room, 256))
                if not batch:
                    break
                for message in batch:
                    info = self.client.publish(message.topic, _wire(message), qos=message.qos, retain=message.retain)
                    self._inflight[info.mid] = message.seq
                    self._last_handed = message.seq
                    self.sent += 1
                room -= len(batch)
                self._ack_drained()
                room = self.config.window - len(self._inflight)

    def _ack_drained(self) -> None:
        seqs = []
        while self._acked:
            seq = self._inflight.pop(self._acked.popleft(), None)
            if seq is not None:
                seqs.append(seq)
        if seqs:
            self.spool.ack(seqs)
            self.acknowledged += len(seqs)

    # -- paho callbacks (network thread) ------------------------------------------------------
    def _connected_cb(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s:%s refused the connection: %s", self.config.broker, self.config.port, reason)
            return
        self.connects += 1
        log.info("connected to MQTT broker %s:%s", self.config.broker, self.config.port)
        for pattern in self._subscriptions:
            client.subscribe(pattern, qos=1)
        if self._status is not None:
            client.publish(self.config.topic("status"), json.dumps(self._status[0]), qos=1, retain=True)
        self._connected.set()
        self._wake.set()

    def _disconnected_cb(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if self._connected.is_set() and not self._stopping:
            log.warning("MQTT broker %s:%s went away (%s); spooling until it is back",
                        self.config.broker, self.config.port, reason)
        self._connected.clear()

    def _published_cb(self, client: Any, userdata: Any, mid: int, reason: Any = None, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):  # MQTT 5: refused for good (e.g. not authorized)
            log.warning("MQTT broker refused message %s: %s; dropping it", mid, reason)
        self._acked.append(mid)
        self._wake.set()

    def _message_cb(self, client: Any, userdata: Any, message: Any) -> None:
        if self._on_message is not None:
            self._on_message(message.topic, message.payload)


def cpu_temperature_c() -> float | None:
    """The CPU's temperature from ``/sys/class/thermal``, where the board exposes one."""
    base = Path("/sys/class/thermal")
    best = None
    for zone in sorted(base.glob("thermal_zone*")) if base.exists() else []:
        try:
            kind = (zone / "type").read_text().strip().lower()
            value = int((zone / "temp").read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
        if any(k in kind for k in ("cpu", "soc", "x86_pkg", "core")):
            return value
        best = value if best is None else best
    return best


class _CpuMeter:
    """Process CPU % since the previous reading (100 = one core busy)."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())

    def read(self) -> float:
        now = (time.monotonic(), time.process_time())
        wall = now[0] - self._last[0]
        used = now[1] - self._last[1]
        self._last = now
        return round(100 * used / wall, 1) if wall > 0 else 0.0


class Telemetry:
    """Publishes a runtime's metrics and alerts, and takes commands, over MQTT.

    Args:
        config: Broker and topic settings.
        runtime: A :class:`edgec.runtime.server.Runtime` (or anything with ``stats()``,
            ``reload(name, path)`` and ``alert_listeners``); ``None`` publishes process
            metrics only.

    Example:
        >>> telemetry = Telemetry(TelemetryConfig(broker="localhost", fleet="shop"), runtime).start()
        >>> telemetry.stop()
    """

    def __init__(self, config: TelemetryConfig, runtime: Any = None) -> None:
        self.config = config
        self.runtime = runtime
        self.interval_s = config.interval_s
        self.started = time.time()
        online = {"schema": SCHEMA, "state": "online", "edgec": __version__, "pid": os.getpid()}
        offline = {"schema": SCHEMA, "state": "offline"}
        self.publisher = Publisher(config, on_message=self._on_message, subscriptions=(config.topic("cmd/+"),),
                                   status=(online, offline))
        self._commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._tick = threading.Event()
        self._cpu = _CpuMeter()
        self._previous: dict[str, tuple[float, int, int]] = {}
        self._threads = [threading.Thread(target=self._ticker, name="edgec-telemetry", daemon=True),
                         threading.Thread(target=self._command_loop, name="edgec-telemetry-cmd", daemon=True)]

    def start(self) -> Telemetry:
        self.publisher.start()
        if self.runtime is not None:
            self.runtime.alert_listeners.append(self._on_alert)
            for name, why in getattr(self.runtime, "failed", {}).items():
                self.event("model_load_failure", f"model {name} is not served: {why}", model=name)
        for t in self._threads:
            t.start()
        return self

    def stop(self, flush_s: float = 5.0) -> None:
        self._stop.set()
        self._tick.set()
        for t in self._threads:
            t.join(5)
        if self.runtime is not None and self._on_alert in self.runtime.alert_listeners:
            self.runtime.alert_listeners.remove(self._on_alert)
        self.publisher.stop(flush_s)

    # -- messages -----------------------------------------------------------------------------
    def event(self, kind: str, message: str, **extra: Any) -> int:
        """Publish one alert on ``events``."""
        return self.publisher.publish(self.config.topic("events"), {
            "schema": SCHEMA, "time": time.time(), "kind": kind, "message": message, **extra})

    def snapshot(self) -> dict[str, Any]:
        """The telemetry message: process, spool, cache and per-model metrics."""
        now = time.time()
        from .cache import rss_bytes

        out: dict[str, Any] = {
            "schema": SCHEMA, "time": now, "fleet": self.config.fleet, "device": self.config.device,
            "uptime_s": round(now - self.started, 3), "interval_s": self.interval_s,
            "process": {"rss_bytes": rss_bytes(), "cpu_percent": self._cpu.read(), "cpu_temp_c": cpu_temperature_c()},
            "spool": {"queued": len(self.publisher.spool), "dropped": self.publisher.spool.dropped},
            "models": {},
        }
        if self.runtime is None:
            return out
        stats = self.runtime.stats()
        out["uptime_s"] = round(stats["uptime_s"], 3)
        out["cache"] = {k: stats["cache"][k] for k in ("budget_bytes", "used_bytes")} | stats["cache"]["stats"]
        loaded = {e["name"]: e for e in stats["cache"]["loaded"]}
        for name, batcher in stats["batchers"].items():
            lat = stats["latency"].get(name, {})
            requests, errors = lat.get("requests", 0), lat.get("errors", 0)
            before = self._previous.get(name, (self.started, 0, 0))
            span = max(now - before[0], 1e-9)
            self._previous[name] = (now, requests, errors)
            entry = loaded.get(name, {})
            out["models"][name] = {
                "loaded": name in loaded, "version": entry.get("version"), "sha256": entry.get("sha256"),
                "format": entry.get("format"), "precision": entry.get("precision"),
                "latency_ms": {q: lat.get(f"{q}_ms") for q in ("p50", "p95", "p99")},
                "requests": requests, "errors": errors,
                "requests_per_s": round((requests - before[1]) / span, 3),
                "errors_per_s": round((errors - before[2]) / span, 3),
                "queue_depth": batcher["queue_depth"], "batch_sizes": batcher["stats"]["batch_sizes"],
                "rejected": batcher["stats"]["rejected"],
            }
            p95 = lat.get("p95_ms")
            if self.config.latency_alert_ms is not None and p95 is not None and p95 > self.config.latency_alert_ms:
                self.event("latency", f"model {name} p95 latency {p95:.1f} ms is above {self.config.latency_alert_ms:g} ms",
                           model=name, p95_ms=p95)
        return out

    def publish_snapshot(self) -> int:
        return self.publisher.publish(self.config.topic("telemetry"), self.snapshot())

    def _ticker(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_snapshot()
            except Exception:  # telemetry must never take serving down
                log.exception("telemetry snapshot failed")
            self._tick.wait(self.interval_s)
            self._tick.clear()

    def _on_alert(self, alert: dict[str, Any]) -> None:
        self.event(alert.get("kind", "alert"), alert.get("message", ""))

    # -- commands -----------------------------------------------------------------------------
    def _on_message(self, topic_name: str, payload: bytes) -> None:
        try:
            self._commands.put_nowait((topic_name, payload))
        except queue.Full:
            self._result(topic_name.rsplit("/", 1)[-1], None, error="device busy: too many commands queued; retry")

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                topic_name, payload = self._commands.get(timeout=0.5)
            except queue.Empty:
                continue
            verb = topic_name.rsplit("/", 1)[-1]
            request_id = None
            try:
                body = json.loads(payload) if payload.strip() else {}
                if not isinstance(body, dict):
                    raise ValidationError("command payload must be a JSON object")
                request_id = body.get("id")
                result = self.command(verb, body)
            except json.JSONDecodeError as exc:
                self._result(verb, request_id, error=f"payload is not JSON: {exc}")
            except KeyError as exc:
                self._result(verb, request_id, error=f"unknown model {exc}")
            except (EdgecError, OSError, ValueError, TypeError) as exc:
                self._result(verb, request_id, error=str(exc))
            except Exception as exc:  # a command must never kill the device
                log.exception("command %s failed", verb)
                self._result(verb, request_id, error=f"internal error: {exc}")
            else:
                self._result(verb, request_id, result=result)

    def command(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run one command; returns its result.

        Raises:
            ValidationError: Unknown verb or bad arguments.
            KeyError: Unknown model.
            EdgecError: The command failed (e.g. the new bundle is broken).
        """
        if verb == "interval":
            seconds = body.get("seconds")
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0.1 <= seconds <= 86_400:
                raise ValidationError('interval needs {"seconds": <number between 0.1 and 86400>}')
            self.interval_s = float(seconds)
            self._tick.set()
            return {"interval_s": self.interval_s}
        if verb == "stats":
            seq = self.publish_snapshot()
            return {"telemetry_seq": seq}
        if verb == "reload":
            if self.runtime is None:
                raise ValidationError("this device serves no models")
            model = body.get("model")
            if not isinstance(model, str):
                raise ValidationError('reload needs {"model": "<name>"} (and optionally "path")')
            return {"reloaded": self.runtime.reload(model, body.get("path"))}
        raise ValidationError(f"unknown command {verb!r}: use one of {', '.join(VERBS)}")

    def _result(self, verb: str, request_id: Any, *, result: Any = None, error: str | None = None) -> None:
        message = {"schema": SCHEMA, "time": time.time(), "verb": verb, "id": request_id, "ok": error is None}
        if error is None:
            message["result"] = result
        else:
            message["error"] = error
        self.publisher.publish(self.config.topic("cmd-result"), message)


class FleetView:
    """What a dashboard knows: the latest status, telemetry and event of every device seen.

    Feed it every message under ``edgec/#``; malformed ones are counted and skipped.
    """

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], dict[str, Any]] = {}
        self.malformed = 0

    def update(self, topic_name: str, payload: bytes) -> bool:
        parts = topic_name.split("/")
        if len(parts) != 4 or parts[0] != "edgec" or parts[3] not in ("status", "telemetry", "events"):
            return False
        try:
            message = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.malformed += 1
            return False
        if not isinstance(message, dict):
            self.malformed += 1
            return False
        device = self.devices.setdefault((parts[1], parts[2]), {"status": None, "telemetry": None, "event": None})
        device[{"events": "event"}.get(parts[3], parts[3])] = message
        device["seen"] = time.time()
        return True

    def rows(self) -> list[dict[str, Any]]:
        """One row per device and model (a device without models gets one row)."""
        out = []
        for (fleet, name), d in sorted(self.devices.items()):
            t = d["telemetry"] or {}
            process = t.get("process", {})
            base = {"fleet": fleet, "device": name, "state": (d["status"] or {}).get("state", "?"),
                    "rss_mb": process.get("rss_bytes") / 2**20 if process.get("rss_bytes") else None,
                    "cpu_percent": process.get("cpu_percent"), "cpu_temp_c": process.get("cpu_temp_c"),
                    "spool": t.get("spool", {}).get("queued"), "dropped": t.get("spool", {}).get("dropped"),
                    "last_event": (d["event"] or {}).get("message"), "seen_s_ago": time.time() - d.get("seen", 0)}
            models = t.get("models") or {}
            if not models:
                out.append({**base, "model": None})
            for model, m in sorted(models.items()):
                out.append({**base, "model": model, "version": m.get("version"), **m.get("latency_ms", {}),
                            "requests_per_s": m.get("requests_per_s"), "errors_per_s": m.get("errors_per_s"),
                            "queue_depth": m.get("queue_depth")})
        return out
