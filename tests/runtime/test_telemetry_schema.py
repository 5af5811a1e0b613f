"""docs/telemetry.schema.json against real messages: a real board, a real mosquitto, a real rollout.

The schema is what Node-RED, Grafana's MQTT datasource and Home Assistant users wire up
against; docs/telemetry.md is generated from it. Every topic the schema names must be seen
here, published by real processes, and every message must validate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.broker import Mosquitto
from helpers.boards import Board, drifted  # noqa: E402

jsonschema = pytest.importorskip("jsonschema")
mqtt = pytest.importorskip("paho.mqtt.client")
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "telemetry.schema.json").read_text())


def kind_of(topic: str) -> str | None:
    """The schema definition a topic's messages follow (None: not a JSON topic, e.g. blob chunks)."""
    parts = topic.split("/")
    if parts[0] == "homeassistant":
        return "homeassistant"
    if parts[2] == "blobs":
        return None
    if parts[2] == "desired":
        return "desired"
    if parts[2] == "rollouts":
        return "rollout"
    if len(parts) == 5 and parts[3] in ("update", "cmd"):
        return parts[3]
    return parts[3] if len(parts) == 4 else None


def validator(kind: str):
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{kind}"})


def test_the_schema_is_valid_and_the_docs_are_generated_from_it():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "telemetry-docs.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert validator("status").is_valid({"schema": 1, "state": "online"})
    assert not validator("status").is_valid({"schema": 1, "state": "sleeping"})
    assert not validator("cmd-result").is_valid({"seq": 1, "schema": 1, "time": 1.0, "verb": "stats", "id": None,
                                                 "ok": False, "versions": {}})  # not ok needs its error


def test_every_message_real_boards_and_hosts_publish_follows_the_schema(tmp_path, fixture_bundle, digits_test):
    from edgec.sdk.fleet.link import FleetLink
    from edgec.sdk.fleet.rollout import push

    broker = Mosquitto(tmp_path / "broker").start()
    seen: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="schema-check")

    def on_message(c, u, message) -> None:
        with lock:
            seen.append((message.topic, message.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe([("edgec/#", 1), ("homeassistant/#", 1)])
    client.loop_start()
    board = Board(tmp_path, "pi-1", broker, fixture_bundle("onnx", "fp32"),
                  telemetry="latency_alert_ms = 0.000001\n").start()
    try:
        for i in range(10):
            board.predict(digits_test.x[i:i + 1])
        client.publish("edgec/test/pi-1/cmd/stats", json.dumps({"id": "a"}), qos=1)
        client.publish("edgec/test/pi-1/cmd/interval", json.dumps({"seconds": 0.5}), qos=1)
        client.publish("edgec/test/pi-1/cmd/reload", json.dumps({"id": 7, "model": "nope"}), qos=1)
        with FleetLink("127.0.0.1", broker.port, fleet="test") as link:
            bad = drifted(fixture_bundle("onnx", "int8"), tmp_path / "drifted")  # fails its parity check
            push(link, bad, "digits", "device/pi-1", timeout_s=60)
            push(link, fixture_bundle("onnx", "int8"), "digits", "device/pi-1", timeout_s=60)
        time.sleep(1.5)
    finally:
        board.stop()
        time.sleep(0.5)
        client.loop_stop()
        client.disconnect()
        broker.stop()

    counts: dict[str, int] = {}
    for topic, payload in seen:
        kind = kind_of(topic)
        if kind is None or not payload:
            continue
        message = json.loads(payload)
        errors = sorted(validator(kind).iter_errors(message), key=lambda e: list(e.path))
        assert not errors, f"{topic}: {errors[0].message} at {list(errors[0].path)} in {message}"
        counts[kind] = counts.get(kind, 0) + 1
    topics = {key for key, d in SCHEMA["$defs"].items() if "x-topic" in d}
    assert set(counts) == topics, f"never seen: {topics - set(counts)}; not in the schema: {set(counts) - topics}"
    updates = [json.loads(p) for t, p in seen if kind_of(t) == "update"]
    assert {"live", "rolled_back"} <= {u["state"] for u in updates}
    events = [json.loads(p) for t, p in seen if kind_of(t) == "events"]
    assert {"latency", "model_update_failure"} <= {e["kind"] for e in events}
    assert any(json.loads(p)["ok"] is False for t, p in seen if kind_of(t) == "cmd-result")


def test_home_assistant_sensors_read_numbers_from_real_telemetry(tmp_path, fixture_bundle, digits_test):
    """Render each discovered sensor's template as HA does (Jinja) against a real telemetry message."""
    jinja2 = pytest.importorskip("jinja2")
    broker = Mosquitto(tmp_path / "broker").start()
    retained: dict[str, dict] = {}
    telemetry: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha")

    def on_message(c, u, message) -> None:
        if message.topic.startswith("homeassistant/"):
            retained[message.topic] = json.loads(message.payload)
        elif message.topic.endswith("/telemetry"):
            telemetry.append(json.loads(message.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe([("homeassistant/#", 1), ("edgec/+/+/telemetry", 1)])
    client.loop_start()
    board = Board(tmp_path, "pi.1", broker, fixture_bundle("tflite", "int8")).start()
    try:
        for i in range(10):
            board.predict(digits_test.x[i:i + 1])
        until = time.monotonic() + 20
        while not any(t["models"]["digits"]["requests"] >= 10 for t in telemetry) and time.monotonic() < until:
            time.sleep(0.1)
    finally:
        board.stop()
        client.loop_stop()
        client.disconnect()
        broker.stop()
    message = next(t for t in telemetry if t["models"]["digits"]["requests"] >= 10)
    assert len(retained) == 10, sorted(retained)  # 5 board sensors, 5 for the one model
    assert all(t.startswith("homeassistant/sensor/edgec_test_pi_1/") for t in retained)  # '.' is not allowed in ids
    assert len({c["unique_id"] for c in retained.values()}) == 10
    env = jinja2.Environment()
    values = {}
    for topic, config in retained.items():
        assert config["state_topic"] == "edgec/test/pi.1/telemetry" and config["availability_topic"] == "edgec/test/pi.1/status"
        values[topic.split("/")[3]] = env.from_string(config["value_template"]).render(value_json=message)
    for key in ("rss", "cpu", "spool", "uptime", "digits_p50", "digits_p95", "digits_rps", "digits_errors"):
        float(values[key])  # a number HA can plot
    assert float(values["rss"]) == pytest.approx(message["process"]["rss_bytes"] / 2**20, abs=0.06)
    assert float(values["digits_p95"]) == pytest.approx(message["models"]["digits"]["latency_ms"]["p95"])
    assert values["temperature"] in ("None",) or float(values["temperature"]) > 0  # None where no sensor: HA shows unknown
    assert values["digits_drift"] == "None"  # 10 samples: no score yet (a scored one: tests/runtime/test_drift_board.py)
