"""MQTT transport that loses nothing when the broker goes away: store, forward, acknowledge.

Every QoS 1 message goes through a :class:`~edgec.runtime.agent.spool.Spool` first and is deleted
from it only once the broker acknowledges it, so a broker outage or a restart of the process
loses nothing (a message in flight at that moment may arrive twice, as QoS 1 allows; its
``seq`` tells the copies apart). The device keeps a persistent MQTT session
(``session_expiry_s``), so QoS 1 messages sent to it while it is offline wait at the broker.

Only the standard library and paho-mqtt are imported.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._optional import need
from ...errors import BrokerError, ValidationError
from ..fleet_config import TelemetryConfig
from .latest import Latest
from .spool import Spool, Spooled

log = logging.getLogger("edgec.telemetry")
SCHEMA = 1  # the payload schema every message carries
IDLE_WAKE_S = 5.0  # how often an idle board's threads wake on their own (a fleet of idle boards stays idle)


def paho_client() -> Any:
    """``paho.mqtt.client``, or a clear error naming the extra that installs it."""
    return need("paho.mqtt.client", extra="runtime", purpose="to talk MQTT")


class UnsupportedProtocol(BrokerError):
    """The broker does not speak the MQTT version asked for (MQTT 5 to aedes, or RabbitMQ before 3.13)."""


def mqtt_client(*, client_id: str = "", username: str | None = None, password: str | None = None,
                tls: bool = False, ca_file: Path | str | None = None, protocol: str = "5") -> Any:
    """A paho client (MQTT ``protocol``) for a short-lived connection (the host's fleet tools, ``edgec doctor``):
    credentials, and TLS when asked or given a CA."""
    mqtt = paho_client()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    if tls or ca_file is not None:
        client.tls_set(ca_certs=str(ca_file) if ca_file is not None else None)
    return client


def connect(client: Any, broker: str, port: int, *, timeout_s: float = 10.0) -> None:
    """Connect, start paho's network thread and wait for the broker's answer.

    Raises:
        BrokerError: The broker cannot be reached, or refused the credentials or the TLS handshake.
    """
    answered, answer = threading.Event(), {}
    then = client.on_connect

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        answer["reason"] = reason
        answered.set()
        if then is not None and not getattr(reason, "is_failure", False):
            then(c, userdata, flags, reason, properties)

    client.on_connect = on_connect
    try:
        client.connect(broker, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot reach MQTT broker {broker}:{port}: {exc}; check the broker's host and port "
                          "(and --ca-file for a broker with its own CA)") from None
    client.loop_start()
    if not answered.wait(timeout_s):
        client.loop_stop()
        raise BrokerError(f"MQTT broker {broker}:{port} did not answer the connection in {timeout_s:.0f}s "
                          "(a TLS port spoken to without mqtts://, or the other way round?)")
    if getattr(answer["reason"], "is_failure", False):
        client.loop_stop()
        if _protocol_refused(answer["reason"]):
            raise UnsupportedProtocol(f"MQTT broker {broker}:{port} does not speak MQTT 5")
        raise BrokerError(f"MQTT broker {broker}:{port} refused the connection: {answer['reason']}; "
                          "check --username and --password (or EDGEC_MQTT_PASSWORD)")


def open_client(make: Callable[[str], Any], broker: str, port: int, *, timeout_s: float = 10.0) -> Any:
    """A client from ``make(protocol)``, connected: MQTT 5, or MQTT 3.1.1 when the broker does not speak 5
    (aedes; RabbitMQ before 3.13). What the host's tools connect with.

    Raises:
        BrokerError: As :func:`connect`.
    """
    client = make("5")
    try:
        connect(client, broker, port, timeout_s=timeout_s)
    except UnsupportedProtocol:
        client = make("3.1.1")
        connect(client, broker, port, timeout_s=timeout_s)
    return client


def _protocol_refused(reason: Any) -> bool:
    return "protocol version" in str(reason).lower()  # MQTT 5's 0x84, MQTT 3.1.1's return code 1


def connect_settings(client: Any, cfg: TelemetryConfig) -> None:
    """Credentials, TLS and reconnect backoff from ``cfg`` on a paho client (every edgec connection)."""
    client.reconnect_delay_set(1, max(1, int(cfg.reconnect_max_s)))
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password if cfg.password_file is None else read_secret(cfg.password_file))
    if cfg.tls or cfg.ca_file or cfg.cert_file:
        try:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as exc:
            raise ValidationError(f"telemetry TLS files cannot be used: {exc}") from None


def read_secret(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ValidationError(f"telemetry password_file {path}: {exc.strerror}") from None


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
        retained: Called at every connect for ``(topic, payload)`` pairs to publish retained
            right away, outside the spool (descriptions such as Home Assistant discovery:
            the next connect publishes them again, so there is nothing to keep).
    """

    def __init__(self, config: TelemetryConfig, *, on_message: Any = None, subscriptions: tuple[str, ...] = (),
                 status: tuple[dict[str, Any], dict[str, Any]] | None = None, retained: Any = None) -> None:
        self.config = config
        self._retained = retained
        self._on_message = on_message
        self._subscriptions = subscriptions
        self._status = status
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._started = False
        self._acked: deque[int] = deque()  # mids from paho's thread; appends are atomic
        self._inflight: dict[int, int] = {}  # mid -> seq, owned by the sender thread
        self._last_handed = 0
        self.sent = 0
        self.acknowledged = 0
        self.connects = 0
        self.client = None
        self._session: dict[str, Any] = {}  # connect_async's session arguments (MQTT 5)
        self.sender_errors = 0  # exceptions the sender survived
        self.sender_restarts = 0
        self.last_error: str | None = None
        self._beat = time.monotonic()  # the sender's last pass
        self.on_problem: Any = None  # called with a one-line message (the agent publishes it as an event)
        self.connect_listeners: list[Any] = []  # called with the client after each connect (the update agent)
        self.latest = Latest()  # retained states where the newest must win (publish_latest)
        self._sender = self._new_sender()
        if config.broker:
            self.client = self._make_client()  # bad TLS files fail here, before the spool is opened
        self.spool = Spool(config.spool, max_messages=config.spool_max_messages,
                           max_bytes=int(config.spool_max_mb * 2**20), on_problem=self._problem)

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
        connect_settings(client, cfg)
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
        self._started = True
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

    def publish_latest(self, topic_name: str, payload: bytes) -> None:
        """Publish a retained state right away, outside the spool: only its newest payload matters, and
        the broker is made to keep that one (:mod:`.latest`)."""
        if self.client is not None:
            self.latest.publish(self.client, topic_name, payload)

    def _new_sender(self) -> threading.Thread:
        return threading.Thread(target=self._send_loop, name="edgec-telemetry-send", daemon=True)

    def _problem(self, message: str) -> None:
        if self.on_problem is not None:
            self.on_problem(message)

    def _send_loop(self) -> None:
        """Hand spooled messages to paho, forever: an error is logged, counted and retried, never fatal."""
        failures = 0
        while not self._stopping:
            self._beat = time.monotonic()
            self._wake.wait(IDLE_WAKE_S)  # a message, an ack, a connect or stop() wakes it sooner
            self._wake.clear()
            try:
                self._send_pass()
                failures = 0
            except Exception as exc:  # a damaged spool, a paho error: the sender must not die of it
                failures += 1
                self.sender_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("telemetry sender failed (%d in a row); retrying", failures)
                if failures in (1, 10, 100):
                    self._problem(f"telemetry sender failed ({failures} in a row), retrying: {self.last_error}")
                time.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def ensure_sender(self) -> bool:
        """Restart the sender thread if it is gone (it should never be); True if it had to."""
        if self._stopping or self._sender.is_alive() or not self._started:
            return False
        self.sender_restarts += 1
        self._problem("telemetry sender thread was gone; restarted it")
        self._sender = self._new_sender()
        self._sender.start()
        return True

    def health(self) -> dict[str, Any]:
        """How the telemetry path is: ok (sender alive and passing), and what it is doing."""
        alive = self._sender.is_alive()
        stale = time.monotonic() - self._beat > 30.0
        ok = not self._started or self._stopping or (alive and not stale)
        return {"ok": ok, "sender": "running" if alive and not stale else ("stuck" if alive else "stopped"),
                "connected": self.connected, "queued": len(self.spool), "sender_errors": self.sender_errors,
                "last_error": self.last_error, "spool_problems": self.spool.problems[-3:]}

    def _send_pass(self) -> None:
        self._ack_drained()
        if self.client is not None:
            self.latest.settle(self.client)
        if self.client is None or not self._connected.is_set():
            return
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
            log.warning("MQTT broker %s:%s refused the connection: %s%s", self.config.broker, self.config.port, reason,
                        '; it does not speak MQTT 5: set protocol = "3.1.1" in [telemetry]'
                        if _protocol_refused(reason) and self.config.protocol == "5" else "")
            return
        self.connects += 1
        log.info("connected to MQTT broker %s:%s", self.config.broker, self.config.port)
        for pattern in self._subscriptions:
            client.subscribe(pattern, qos=1)
        if self._status is not None:
            client.publish(self.config.topic("status"), json.dumps(self._status[0]), qos=1, retain=True)
        if self._retained is not None:
            try:
                for topic_name, payload in self._retained():
                    client.publish(topic_name, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)
            except Exception:  # a description must never stop telemetry
                log.exception("publishing retained descriptions failed")
        for listener in self.connect_listeners:
            try:
                listener(client)
            except Exception:  # another user of the connection must not stop telemetry
                log.exception("a connect listener failed")
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
        self.latest.acked(mid)
        self._wake.set()

    def _message_cb(self, client: Any, userdata: Any, message: Any) -> None:
        if self._on_message is not None:
            self._on_message(message.topic, message.payload)
