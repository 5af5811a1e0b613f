"""Drift as a fleet sees it: a real `edgec serve` board on a real mosquitto, served clean then shifted digits
over HTTP; the score and the alert in its telemetry, its events, /metrics, Home Assistant's sensor and the
dashboard's view."""

from __future__ import annotations

import json
import urllib.request

import pytest
from helpers.boards import Board
from helpers.broker import Mosquitto
from helpers.mqtt import Subscriber
from helpers.shifts import SHIFTS

from edgec.sdk.fleet.dashboard import AlertRules
from edgec.sdk.fleet.dashboard import board as dashboard_board
from edgec.sdk.fleet.view import FleetView


def _latest_drift(dash: Subscriber, after: int) -> dict:
    telemetry = dash.on("/pi-1/telemetry")
    return telemetry[-1]["models"]["digits"].get("drift") if len(telemetry) > after else None


def test_a_board_reports_no_drift_on_clean_digits_and_alerts_on_blurred_ones(tmp_path, fixture_bundle, digits_test):
    jinja2 = pytest.importorskip("jinja2")
    broker = Mosquitto(tmp_path / "broker").start()
    dash = Subscriber(broker.port)
    dash.client.subscribe("homeassistant/#", qos=1)  # the board's retained discovery, as HA reads it
    board = Board(tmp_path, "pi-1", broker, fixture_bundle("tflite", "int8"),
                  top="[drift]\nwindow = 450\nmin_samples = 200\ncpu_budget = 0.5\n").start()
    try:
        for i in range(0, 450, 10):
            assert board.predict(digits_test.x[i:i + 10]) == 200
        seen = len(dash.on("/pi-1/telemetry"))
        assert Subscriber.wait(lambda: (_latest_drift(dash, seen) or {}).get("samples", 0) >= 200, 15)
        clean = _latest_drift(dash, seen)
        assert clean["score"] < 0.25 and clean["alert"] is False, clean
        assert not [e for e in dash.on("/pi-1/events") if e["kind"] == "drift"]

        blurred = SHIFTS["blur"](digits_test.x)
        for i in range(0, 450, 10):
            assert board.predict(blurred[i:i + 10]) == 200  # served all the same: drift is reported, not refused
        assert Subscriber.wait(lambda: [e for e in dash.on("/pi-1/events") if e["kind"] == "drift"], 15)
        (event,) = [e for e in dash.on("/pi-1/events") if e["kind"] == "drift"]
        assert "model digits" in event["message"] and "PSI" in event["message"]
        seen = len(dash.on("/pi-1/telemetry"))
        assert Subscriber.wait(lambda: (_latest_drift(dash, seen) or {}).get("alert"), 15)
        message = dash.on("/pi-1/telemetry")[-1]
        drift = message["models"]["digits"]["drift"]
        assert drift["score"] > 0.25 and drift["statistic"] in event["message"]

        with urllib.request.urlopen(f"{board.url}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'edgec_drift_alert{model="digits"} 1' in metrics
        assert 'edgec_drift_score{model="digits"}' in metrics

        # Home Assistant: the discovered sensor's template gives the score as a number.
        discovery = next(payload for topic, payload in dash.messages
                         if topic.startswith("homeassistant/sensor/") and topic.endswith("/digits_drift/config"))
        rendered = jinja2.Environment().from_string(discovery["value_template"]).render(value_json=message)
        assert float(rendered) == pytest.approx(drift["score"])

        # The dashboard: the model's row carries the score and the board an alert of kind drift.
        view = FleetView()
        for topic, payload in dash.messages:
            view.update(topic, json.dumps(payload).encode())
        row = dashboard_board(("test", "pi-1"), view.devices[("test", "pi-1")], message["time"], AlertRules())
        assert row["models"][0]["drift"] == pytest.approx(drift["score"]) and row["models"][0]["drift_alert"]
        assert any(a["kind"] == "drift" for a in row["alerts"])
        # `edgec telemetry watch` reads the same view: its rows carry the score
        assert [r["drift"] for r in view.rows() if r["model"] == "digits"] == [pytest.approx(drift["score"])]
    finally:
        board.stop()
        dash.close()
        broker.stop()
