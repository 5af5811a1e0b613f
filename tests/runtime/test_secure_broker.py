"""The broker files shipped in deploy/mosquitto (TLS, a password file, the ACL) on a real mosquitto:
a real board and the real CLI do a signed rollout through them, and a board's credentials
cannot publish as another board, publish a desired state or a chunk, or read another's commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers.broker import Mosquitto, free_port
from typer.testing import CliRunner
from helpers.boards import Board  # noqa: E402

from edgec.cli import app  # noqa: E402
from edgec.runtime.agent.admission import bundle_version  # noqa: E402
from edgec.sdk.bundle.sign import new_keys, sign_bundle  # noqa: E402

mqtt = pytest.importorskip("paho.mqtt.client")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
USERS = {"fleet-admin": "admin-secret", "dashboard": "dash-secret", "pi-1": "pi-1-secret", "pi-2": "pi-2-secret"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """mosquitto with the shipped mosquitto.conf and acl verbatim but for where the files are and the port."""
    root = tmp_path_factory.mktemp("secure-broker")
    made = subprocess.run([str(DEPLOY / "make-certs.sh"), str(root / "certs"), "localhost", "127.0.0.1"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(root / "passwd"), user, password],
                       check=True)
    shutil.copy(DEPLOY / "acl", root / "acl")
    port = free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 8883\n" in conf
    conf = (conf.replace("/mosquitto/config/", f"{root}/").replace("/mosquitto/data/", f"{root}/data/")
            .replace("listener 8883\n", f"listener {port} 127.0.0.1\n"))
    (root / "data").mkdir()
    broker = Mosquitto(root, port, conf=conf).start()
    yield broker, root
    broker.stop()


def client(secure, user: str | None, password: str | None = None, *, tls: bool = True):
    """A paho client as ``user``; returns it connected, or the broker's refusal as a string."""
    broker, root = secure
    answer: dict = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    if user is not None:
        c.username_pw_set(user, password if password is not None else USERS[user])
    if tls:
        c.tls_set(ca_certs=str(root / "certs" / "ca.crt"))
    c.on_connect = lambda cl, u, f, reason, p: answer.setdefault("reason", reason)
    received: list[tuple[str, bytes]] = []
    c.on_message = lambda cl, u, m: received.append((m.topic, m.payload))
    c.received = received
    try:
        c.connect("127.0.0.1", broker.port)
    except OSError as exc:
        return f"connect failed: {exc}"
    c.loop_start()
    until = time.monotonic() + (10 if tls else 3)  # plain MQTT on the TLS port is never answered
    while "reason" not in answer and time.monotonic() < until and c.is_connected() is False:
        time.sleep(0.05)
    time.sleep(0.2)
    if answer.get("reason") is None or answer["reason"].is_failure:
        c.loop_stop()
        return f"refused: {answer.get('reason')}"
    return c


def test_no_anonymous_no_wrong_password_no_plain_tcp(secure):
    assert client(secure, None).startswith("refused")
    assert client(secure, "pi-1", "guess").startswith("refused: Not authorized")
    assert not isinstance(client(secure, "pi-1", tls=False), mqtt.Client)  # TLS only
    ok = client(secure, "pi-1")
    assert isinstance(ok, mqtt.Client), ok
    ok.disconnect()


def test_a_board_publishes_only_as_itself_and_reads_only_its_own_commands(secure):
    watcher, pi1, pi2 = client(secure, "dashboard"), client(secure, "pi-1"), client(secure, "pi-2")
    admin = client(secure, "fleet-admin")
    try:
        watcher.subscribe("#", qos=1)
        pi2.subscribe("edgec/shop/pi-2/cmd/#", qos=1)
        pi1.subscribe([("edgec/shop/pi-2/cmd/#", 1), ("edgec/shop/pi-2/telemetry", 1)])
        time.sleep(0.5)
        forged = ["edgec/shop/pi-2/telemetry", "edgec/shop/pi-2/status", "edgec/shop/pi-2/update/digits",
                  "edgec/shop/desired/digits/all", "edgec/shop/desired/digits/device/pi-1", "edgec/shop/blobs/" + "0" * 64 +
                  "/0", "edgec/shop/pi-2/cmd/reload", "edgec/other/pi-1/telemetry", "homeassistant/sensor/edgec_shop_pi-2/x/config"]
        for topic in forged:
            pi1.publish(topic, b'{"forged": true}', qos=1).wait_for_publish(5)
        own = ["edgec/shop/pi-1/telemetry", "edgec/shop/pi-1/update/digits", "homeassistant/sensor/edgec_shop_pi-1/x/config"]
        for topic in own:
            pi1.publish(topic, b'{"schema": 1}', qos=1).wait_for_publish(5)
        admin.publish("edgec/shop/pi-2/cmd/stats", b"{}", qos=1).wait_for_publish(5)
        watcher.publish("edgec/shop/desired/digits/all", b"{}", qos=1).wait_for_publish(5)  # a read-only user
        time.sleep(1.0)
        seen = {topic for topic, _ in watcher.received}
        assert set(own) <= seen, seen
        assert not seen & set(forged) - {"edgec/shop/pi-2/cmd/reload"} and "edgec/shop/desired/digits/all" not in seen
        # the forged command never reached pi-2; the fleet-admin's did; pi-1 read none of pi-2's traffic
        assert [t for t, _ in pi2.received] == ["edgec/shop/pi-2/cmd/stats"], pi2.received
        assert pi1.received == []
    finally:
        for c in (watcher, pi1, pi2, admin):
            c.loop_stop()
            c.disconnect()


def test_a_signed_rollout_through_tls_passwords_and_the_acl(secure, fixture_bundle, tmp_path):
    broker, root = secure
    private, public, _ = new_keys(tmp_path / "keys" / "fleet")
    bundles = {}
    for name in ("fp32", "int8"):
        bundles[name] = shutil.copytree(fixture_bundle("onnx", name), tmp_path / f"signed-{name}")
        sign_bundle(bundles[name], private)
    (tmp_path / "pi-1.password").write_text(USERS["pi-1"] + "\n")
    telemetry = (f'tls = true\nca_file = "{root / "certs" / "ca.crt"}"\nusername = "pi-1"\n'
                 f'password_file = "{tmp_path / "pi-1.password"}"\n')
    board = Board(tmp_path, "pi-1", broker, bundles["fp32"], trusted=public, telemetry=telemetry, fleet="shop").start()
    url = f"mqtts://127.0.0.1:{broker.port}"
    tls = ["--broker", url, "--fleet", "shop", "--ca-file", str(root / "certs" / "ca.crt"), "--username", "fleet-admin"]
    try:
        pushed = CliRunner().invoke(app, ["fleet", "push", str(bundles["int8"]), "--model", "digits", "--to", "group:lab",
                                          *tls, "--password", USERS["fleet-admin"], "--key", str(private),
                                          "--timeout", "90"])
        assert pushed.exit_code == 0 and "pi-1: live" in pushed.output, pushed.output
        assert board.version() == bundle_version(bundles["int8"])
        shown = CliRunner().invoke(app, ["fleet", "status", "--model", "digits", *tls, "--json"],
                                   env={"EDGEC_MQTT_PASSWORD": USERS["fleet-admin"]})
        assert shown.exit_code == 0 and json.loads(shown.stdout)[0]["state"] == "live", shown.output
        wrong = CliRunner().invoke(app, ["fleet", "status", *tls, "--password", "guess"])
        assert wrong.exit_code == 1 and "refused the connection" in wrong.output and "--password" in wrong.output
        no_ca = CliRunner().invoke(app, ["fleet", "status", "--broker", url, "--fleet", "shop", "--username",
                                         "fleet-admin", "--password", USERS["fleet-admin"]])
        assert no_ca.exit_code == 1 and "--ca-file" in no_ca.output, no_ca.output
    finally:
        board.stop()
