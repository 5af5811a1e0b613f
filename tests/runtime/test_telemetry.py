"""MQTT telemetry against a real mosquitto on loopback: outages, restarts, a full spool, commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.broker import Mosquitto
from helpers.mqtt import Subscriber, check_delivery, config

from edgec.errors import ValidationError
from edgec.runtime.config import ServeConfig
from edgec.runtime.serve.runtime import Runtime
from edgec.runtime.agent.spool import Spool
from edgec.runtime.agent.telemetry import Telemetry
from edgec.runtime.fleet_config import TelemetryConfig
from edgec.runtime.agent.publisher import Publisher

mqtt = pytest.importorskip("paho.mqtt.client")


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.mark.slow
def test_a_30s_broker_outage_at_50_msgs_loses_nothing_and_keeps_order(broker, tmp_path):
    dash = Subscriber(broker.port)
    cfg = config(tmp_path, broker.port, window=64)
    pub = Publisher(cfg).start()
    assert Subscriber.wait(lambda: pub.connected, 10)
    published: list[int] = []

    def produce(seconds: float) -> None:
        t0 = time.monotonic()
        for i in range(int(seconds * 50)):
            published.append(pub.publish(cfg.topic("telemetry"), {"schema": 1, "i": len(published)}))
            time.sleep(max(0.0, t0 + (i + 1) / 50 - time.monotonic()))

    produce(3)
    broker.stop()
    assert Subscriber.wait(lambda: not pub.connected, 10)
    produce(30)  # 1500 messages with no broker
    assert len(pub.spool) >= 1400  # waiting on disk, not in paho's memory
    broker.start()
    produce(3)
    assert Subscriber.wait(lambda: len(pub.spool) == 0, 60), f"{len(pub.spool)} still spooled"
    assert Subscriber.wait(lambda: len({m["seq"] for m in dash.on("/telemetry")}) >= len(published), 60)
    check_delivery(dash.on("/telemetry"), set(published), cfg.window)
    assert len(published) == 1800 and pub.spool.dropped == 0
    pub.stop()
    dash.close()


PRODUCER = """
import sys, time
from pathlib import Path
from edgec.runtime.fleet_config import TelemetryConfig
from edgec.runtime.agent.publisher import Publisher
port, spool, count = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cfg = TelemetryConfig(broker="127.0.0.1", port=port, fleet="test", device="pi-1", spool=spool, reconnect_max_s=1,
                      window=64)
pub = Publisher(cfg, status=({"schema": 1, "state": "online"}, {"schema": 1, "state": "offline"})).start()
seq = 0
for i in range(count):
    seq = pub.publish(cfg.topic("telemetry"), {"schema": 1, "i": i})
    print(seq, flush=True)
    time.sleep(0.02)
if count:
    pub.stop(flush_s=60)
    print("done", len(pub.spool), flush=True)
else:
    time.sleep(600)
"""


def _producer(port: int, spool: Path, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(port), str(spool), str(count)],
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_publisher_killed_during_an_outage_loses_nothing_after_restart(broker, tmp_path):
    dash = Subscriber(broker.port)
    spool = tmp_path / "spool.sqlite"
    first = _producer(broker.port, spool, 10_000)
    seqs = [int(first.stdout.readline()) for _ in range(50)]  # 1 s with the broker up
    broker.stop()
    seqs += [int(first.stdout.readline()) for _ in range(150)]  # 3 s into the outage
    first.send_signal(signal.SIGKILL)  # no goodbye, no flush
    first.wait()
    second = _producer(broker.port, spool, 100)  # restarted while the broker is still down
    time.sleep(1)
    broker.start()
    out, _ = second.communicate(timeout=120)
    lines = out.split()
    assert lines[-2] == "done" and lines[-1] == "0", out[-200:]
    last = int(lines[-3])
    assert last > seqs[-1]
    expected = set(range(1, last + 1))  # AUTOINCREMENT: every committed message has one of these
    assert Subscriber.wait(lambda: {m["seq"] for m in dash.on("/telemetry")} >= expected, 60)
    check_delivery(dash.on("/telemetry"), expected, 64)
    assert Spool(spool).dropped == 0
    dash.close()


def test_the_last_will_marks_a_vanished_device_offline(broker, tmp_path):
    dash = Subscriber(broker.port)
    proc = _producer(broker.port, tmp_path / "spool.sqlite", 0)
    assert Subscriber.wait(lambda: dash.on("/status") and dash.on("/status")[-1]["state"] == "online", 20)
    proc.kill()
    proc.wait()
    assert Subscriber.wait(lambda: dash.on("/status")[-1]["state"] == "offline", 60)  # keep-alive 30 s at most
    dash.close()


def test_a_full_spool_drops_the_oldest_and_reports_how_many(broker, tmp_path):
    offline = config(tmp_path, None, spool_max_messages=10)
    telemetry = Telemetry(offline)
    seqs = [telemetry.event("test", f"event {i}") for i in range(25)]
    spool = telemetry.publisher.spool
    assert len(spool) == 10 and spool.dropped == 15
    assert [m.seq for m in spool.after(0, 100)] == seqs[15:]
    snapshot = telemetry.snapshot()["spool"]
    assert (snapshot["queued"], snapshot["dropped"], snapshot["damaged"], snapshot["last_seq"]) == (10, 15, 0, seqs[-1])
    telemetry.publisher.spool.close()
    assert Spool(offline.spool).dropped == 15  # the counter survives a restart
    # Once a broker is configured, the 10 kept events go out, oldest first, and telemetry
    # reports the drops.
    dash = Subscriber(broker.port)
    online = Telemetry(config(tmp_path, broker.port, interval_s=0.2)).start()
    assert Subscriber.wait(lambda: len(dash.on("/events")) >= 10 and dash.on("/telemetry"), 20)
    assert [m["seq"] for m in dash.on("/events")][:10] == seqs[15:]
    assert dash.on("/telemetry")[-1]["spool"]["dropped"] == 15
    online.stop()
    dash.close()


def test_commands_answer_on_cmd_result_and_never_crash(broker, tmp_path, fixture_bundle, digits_test):
    onnx = fixture_bundle("onnx", "fp32")
    runtime = Runtime(ServeConfig.from_dict({"models": [{"name": "digits", "path": str(onnx)}],
                                             "model_roots": [str(tmp_path)]}))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "manifest.json").write_text("{not json")
    for i in range(20):
        runtime.predict("digits", {"input": digits_test.x[i:i + 1]})
    dash = Subscriber(broker.port)
    telemetry = Telemetry(config(tmp_path, broker.port, interval_s=60), runtime).start()
    assert Subscriber.wait(lambda: dash.on("/telemetry"), 10)
    send = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator")
    send.connect("127.0.0.1", broker.port)
    send.loop_start()
    base = "edgec/test/pi-1/cmd/"
    commands = [("interval", {"id": 1, "seconds": 0.5}), ("stats", {"id": 2}),
                ("reload", {"id": 3, "model": "digits"}),
                ("reload", {"id": 4, "model": "digits", "path": str(tmp_path / "missing")}),
                ("reload", {"id": 5, "model": "nope"}), ("interval", {"id": 6, "seconds": "often"}),
                ("selfdestruct", {"id": 7}), ("stats", b"{not json"),
                ("reload", {"id": 8, "model": "digits", "path": str(tmp_path / "half")}),
                ("reload", {"id": 9, "model": "digits", "path": str(onnx)})]
    for verb, body in commands:
        send.publish(base + verb, body if isinstance(body, bytes) else json.dumps(body), qos=1).wait_for_publish(5)
    assert Subscriber.wait(lambda: len(dash.on("/cmd-result")) == len(commands), 20)
    results = {r["id"]: r for r in dash.on("/cmd-result")}
    assert results[1]["ok"] and results[1]["result"] == {"interval_s": 0.5}
    assert results[2]["ok"] and results[3]["ok"] and results[3]["result"]["reloaded"]["name"] == "digits"
    assert not results[4]["ok"] and "missing does not exist" in results[4]["error"]
    assert not results[5]["ok"] and "nope" in results[5]["error"]
    assert not results[6]["ok"] and "seconds" in results[6]["error"]
    assert not results[7]["ok"] and "unknown command 'selfdestruct'" in results[7]["error"]
    assert not results[None]["ok"] and "not JSON" in results[None]["error"]
    assert not results[8]["ok"] and "manifest" in results[8]["error"]
    assert any(e["kind"] == "model_load_failure" for e in dash.on("/events"))  # the broken reload
    assert not results[9]["ok"] and "outside the model folders" in results[9]["error"]
    # A command far larger than any command is dropped before it is queued or decoded, and answered so.
    before = len(dash.on("/cmd-result"))
    send.publish(base + "stats", b'{"id": 10, "pad": "' + b"x" * 100_000 + b'"}', qos=1).wait_for_publish(5)
    assert Subscriber.wait(lambda: any("over 65536" in (r.get("error") or "") for r in dash.on("/cmd-result")[before:]), 10)
    # The faster interval took effect, and the device still serves.
    count = len(dash.on("/telemetry"))
    assert Subscriber.wait(lambda: len(dash.on("/telemetry")) >= count + 3, 10)
    message = dash.on("/telemetry")[-1]
    model = message["models"]["digits"]
    assert model["requests"] == 20 and model["latency_ms"]["p50"] > 0 and model["latency_ms"]["p99"] >= model["latency_ms"]["p50"]
    assert model["sha256"] and model["version"] == model["sha256"][:12] and model["loaded"]
    # Every message says which version answered, so dashboards can split by it.
    assert message["versions"] == {"digits": model["version"]}
    assert all(r["versions"] == {"digits": model["version"]} for r in dash.on("/cmd-result"))
    assert all("versions" in e for e in dash.on("/events"))
    assert message["process"]["rss_bytes"] > 0 and message["uptime_s"] > 0
    # One load at start (a miss), then every one of the 20 requests found the model loaded.
    assert message["cache"]["misses"] == 1 and message["cache"]["hits"] >= 20
    assert runtime.predict("digits", {"input": digits_test.x[:1]})["output"].shape == (1, 10)
    send.loop_stop()
    telemetry.stop()
    runtime.close()
    dash.close()


@pytest.mark.parametrize("protocol,session_expiry_s", [("5", 3600), ("3.1.1", 3600), ("5", 0)])
def test_commands_sent_while_the_device_is_down_wait_for_it(broker, tmp_path, protocol, session_expiry_s):
    dash = Subscriber(broker.port)
    cfg = config(tmp_path, broker.port, interval_s=60, protocol=protocol, session_expiry_s=session_expiry_s)
    Telemetry(cfg).start().stop()  # the device has been here once, and is now down
    assert Subscriber.wait(lambda: [m for m in dash.on("/status") if m["state"] == "offline"], 10)
    send = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator")
    send.connect("127.0.0.1", broker.port)
    send.loop_start()
    cmd = "edgec/test/pi-1/cmd/interval"
    send.publish(cmd, json.dumps({"id": 1, "seconds": 5}), qos=1).wait_for_publish(5)
    telemetry = Telemetry(cfg).start()  # back: the queued command arrives before any sent from now on
    answered = lambda i: [r for r in dash.on("/cmd-result") if r["id"] == i]  # noqa: E731
    until = time.monotonic() + 20
    while not answered(2) and time.monotonic() < until:  # resent until the device has subscribed
        send.publish(cmd, json.dumps({"id": 2, "seconds": 7}), qos=1).wait_for_publish(5)
        Subscriber.wait(lambda: answered(2), 0.5)
    assert answered(2) and answered(2)[0]["ok"]
    if session_expiry_s:
        assert answered(1) and answered(1)[0]["result"] == {"interval_s": 5.0}
        first = [r["id"] for r in dash.on("/cmd-result")]
        assert first.index(1) < first.index(2)
    else:  # no session kept: what was sent while the device was down is gone
        assert not answered(1)
    assert telemetry.interval_s == 7.0
    send.loop_stop()
    telemetry.stop()
    dash.close()


def test_bad_telemetry_settings_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValidationError, match="topic level"):
        TelemetryConfig(fleet="a/b")
    with pytest.raises(ValidationError, match="unknown \\[telemetry\\] key"):
        TelemetryConfig.from_dict({"brokr": "x"})
    with pytest.raises(ValidationError, match="protocol"):
        TelemetryConfig(protocol="4")
    with pytest.raises(ValidationError, match="session_expiry_s 1.5 must be whole seconds"):
        TelemetryConfig(session_expiry_s=1.5)
    cfg = ServeConfig.from_dict({"telemetry": {"broker": "localhost", "fleet": "shop", "spool": "s.db"}},
                                base=tmp_path)
    assert cfg.telemetry.spool == tmp_path / "s.db" and cfg.telemetry.device
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    spool = Spool(garbage)  # set aside, and a new one started: telemetry never stops the server
    assert len(spool) == 0 and spool.put("t", b"{}") == 1
    assert [p.name for p in tmp_path.glob("garbage.db.corrupt-*")] and spool.describe()["quarantined"]
    spool.close()


def test_mqtt_3_1_1_and_credentials_against_a_broker_that_requires_them(tmp_path):
    broker = Mosquitto(tmp_path / "auth")
    passwd = tmp_path / "auth" / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "edge", "s3cret"], check=True)
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                           + f"password_file {passwd}\n")
    broker.start()
    try:
        wrong = Publisher(config(tmp_path / "a", broker.port, protocol="3.1.1", username="edge", password="nope")).start()
        right = Publisher(config(tmp_path / "b", broker.port, protocol="3.1.1", username="edge", password="s3cret")).start()
        seq = right.publish(right.config.topic("events"), {"schema": 1})
        wrong.publish(wrong.config.topic("events"), {"schema": 1})
        assert Subscriber.wait(lambda: len(right.spool) == 0, 10) and seq == 1
        assert not wrong.connected and len(wrong.spool) == 1  # kept for when the credentials are fixed
        wrong.stop(flush_s=0)
        right.stop()
    finally:
        broker.stop()


def test_serve_publishes_telemetry_from_its_config(broker, tmp_path, fixture_bundle, digits_test):
    from edgec.runtime.server import Server

    cfg = ServeConfig.from_dict({"port": 0, "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}],
                                 "telemetry": {"broker": "127.0.0.1", "port": broker.port, "fleet": "test",
                                               "device": "srv", "interval_s": 0.3, "spool": str(tmp_path / "s.db")}})
    dash = Subscriber(broker.port)
    server = Server(cfg).start()
    try:
        assert Subscriber.wait(lambda: any("digits" in m.get("models", {}) for m in dash.on("/telemetry")), 10)
    finally:
        server.stop()
    assert Subscriber.wait(lambda: dash.on("/status")[-1]["state"] == "offline", 10)
    dash.close()
    assert os.path.exists(tmp_path / "s.db")


def test_telemetry_watch_shows_every_device_and_model(broker, tmp_path, fixture_bundle, digits_test):
    import io
    import re

    from rich.console import Console
    from typer.testing import CliRunner

    from edgec.cli import app
    from edgec.sdk.fleet.watch import watch

    runtime = Runtime(ServeConfig.from_dict({"models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}]}))
    runtime.predict("digits", {"input": digits_test.x[:1]})
    devices = [Telemetry(config(tmp_path / "a", broker.port, interval_s=0.5), runtime).start(),
               Telemetry(TelemetryConfig(broker="127.0.0.1", port=broker.port, fleet="lab", device="jetson-2",
                                         spool=tmp_path / "b.db", interval_s=0.5)).start()]
    try:
        result = CliRunner().invoke(app, ["telemetry", "watch", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                                          "--duration", "2"])
        terminal = io.StringIO()
        watch("127.0.0.1", broker.port, duration_s=1.5,
              console=Console(file=terminal, force_terminal=True, width=80, color_system=None))
    finally:
        for d in devices:
            d.stop()
        runtime.close()
    assert result.exit_code == 0, result.output
    # Piped: plain key=value lines, one per device and model as it changes (grep-able).
    lines = result.output.splitlines()
    assert any("/pi-1 state=online model=digits" in line for line in lines), result.output
    assert any("lab/jetson-2 state=online" in line for line in lines), result.output
    assert not any("┃" in line or "│" in line for line in lines)  # no table when piped
    # On an 80-column terminal: the table narrows to the columns that fit, nothing cut to "…".
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    last = drawn[drawn.rindex("edgec devices on"):]
    assert "pi-1" in last and "jetson-2" in last and "digits" in last and "p95 ms" in last, last
    assert "…" not in last and max(len(line) for line in last.splitlines()) <= 80, last
    nobody = CliRunner().invoke(app, ["telemetry", "watch", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                                      "--fleet", "empty", "--duration", "0.5"])
    assert nobody.exit_code == 0 and "no edgec device published" in nobody.output
    refused = CliRunner().invoke(app, ["telemetry", "watch", "--broker", "mqtt://127.0.0.1:1", "--duration", "1"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and "cannot reach MQTT broker" in refused.output


def _pki(root: Path) -> dict[str, Path]:
    """A private CA, a broker certificate for 127.0.0.1 and a device certificate (real openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (scripts/bootstrap.sh installs it with mosquitto)")
    root.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=root, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=edgec test CA")
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("broker", ["-extfile", "san.ext"]), ("device", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *ext)
    return {p.stem + "_" + p.suffix[1:]: p for p in root.iterdir()}


def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path):
    pki = _pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "tls")
    broker.conf.write_text(broker.conf.read_text() + f"cafile {pki['ca_crt']}\ncertfile {pki['broker_crt']}\n"
                           f"keyfile {pki['broker_key']}\nrequire_certificate true\n")
    broker.start()
    try:
        device = Publisher(config(tmp_path / "a", broker.port, tls=True, ca_file=str(pki["ca_crt"]),
                                  cert_file=str(pki["device_crt"]), key_file=str(pki["device_key"]))).start()
        no_cert = Publisher(config(tmp_path / "b", broker.port, tls=True, ca_file=str(pki["ca_crt"]))).start()
        device.publish(device.config.topic("events"), {"schema": 1, "kind": "test"})
        no_cert.publish(no_cert.config.topic("events"), {"schema": 1, "kind": "test"})
        assert Subscriber.wait(lambda: device.connected and len(device.spool) == 0, 15)
        assert not no_cert.connected and len(no_cert.spool) == 1  # refused by the broker, kept on disk
        no_cert.stop(flush_s=0)
        device.stop()
        with pytest.raises(ValidationError, match="TLS files"):
            Publisher(config(tmp_path / "c", broker.port, tls=True, ca_file=str(tmp_path / "missing.pem")))
    finally:
        broker.stop()
