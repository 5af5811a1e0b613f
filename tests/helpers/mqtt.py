"""An MQTT subscriber playing a dashboard, and telemetry settings for a test's device."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edgec.runtime.fleet_config import TelemetryConfig


class Subscriber:
    """A dashboard subscribed to edgec/#: a persistent session (survives broker restarts) unless told."""

    def __init__(self, port: int, name: str = "dashboard", *, persistent: bool = True) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=not persistent)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("edgec/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.wait(lambda: self.client.is_connected(), 10)
        time.sleep(0.3)  # the SUBACK

    def _on_message(self, client, userdata, message) -> None:
        if "/cmd/" in message.topic or "/blobs/" in message.topic or not message.payload:
            return  # commands to the device (some deliberately malformed), bundle chunks, cleared retained states
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def on(self, suffix: str) -> list[dict]:
        with self.lock:
            return [m for t, m in self.messages if t.endswith(suffix)]

    @staticmethod
    def wait(predicate, timeout: float) -> bool:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def check_delivery(received: list[dict], expected: set[int], window: int) -> None:
    """Zero loss, per-topic order, and duplicates only as QoS 1 allows (what was in flight)."""
    seqs = [m["seq"] for m in received]
    assert set(seqs) >= expected, f"lost {sorted(expected - set(seqs))[:20]}"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "messages arrived out of order"
    assert len(seqs) - len(set(seqs)) <= window


def config(tmp_path: Path, port: int | None, **kw) -> TelemetryConfig:
    return TelemetryConfig(broker="127.0.0.1" if port else None, port=port or 1883, fleet="test", device="pi-1",
                           spool=tmp_path / "spool.sqlite", reconnect_max_s=1, **kw)
