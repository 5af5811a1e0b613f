"""Fleet rollout over a real mosquitto on loopback, boards as separate `edgec serve` processes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers.broker import Mosquitto
from helpers.mqtt import Subscriber
from helpers.boards import Board, resum  # noqa: E402

from edgec.sdk.bundle.sign import control_signer, new_keys, sign_bundle
from typer.testing import CliRunner

from edgec.cli import app
from edgec.runtime.agent.admission import bundle_version
from edgec.runtime.system import host_arch
from edgec.sdk.fleet.link import FleetLink, status
from edgec.sdk.fleet.rollout import push

pytest.importorskip("paho.mqtt.client")


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def fleet(tmp_path, broker, fixture_bundle):
    boards: list[Board] = []

    def make(n: int, **kw) -> list[Board]:
        for i in range(n):
            boards.append(Board(tmp_path, f"pi-{len(boards) + 1}", broker, fixture_bundle("onnx", "fp32"), **kw).start())
        return boards[-n:]

    yield make
    for board in boards:
        board.stop()


def link(broker, **kw) -> FleetLink:
    return FleetLink("127.0.0.1", broker.port, fleet="test", **kw)


def _chunks_done(board: Board) -> float:
    """The share of a download's chunks a board has on disk (its resume mark), 0 when none."""
    for mark in (board.root / "store" / ".downloads").glob("*.json"):
        try:
            done = json.loads(mark.read_text())["done"]
        except (OSError, ValueError, KeyError):
            continue
        return done / 1026  # chunks of 16 kB in the test's ~16.04 MB bundle
    return 0.0


def _members(fl: FleetLink, n: int) -> None:
    assert fl.wait_for(lambda: len(fl.members) >= n, 30), "boards did not report their groups"


def test_a_canary_rollout_reaches_every_board_and_requests_never_fail(broker, fleet, fixture_bundle, digits_test):
    boards = fleet(3)
    new = fixture_bundle("onnx", "int8")
    failures, stop = [], threading.Event()

    def traffic():  # a client on every board, through the switch
        while not stop.is_set():
            for board in boards:
                status_code = board.predict(digits_test.x[:1])
                if status_code != 200:
                    failures.append((board.name, status_code))

    client = threading.Thread(target=traffic)
    client.start()
    try:
        with link(broker) as fl:
            _members(fl, 3)
            result = push(fl, new, "digits", "group/lab", canary=1, timeout_s=120)
            assert not result.halted and result.canaries == ["pi-1"]
            assert result.states == {"pi-1": "live", "pi-2": "live", "pi-3": "live"}, result.errors
            rows = {r["device"]: r for r in status(fl, "digits")}
            assert all(r["running"] == result.version and r["state"] == "live" for r in rows.values())
    finally:
        stop.set()
        client.join()
    assert [b.version() for b in boards] == [result.version] * 3
    assert failures == []
    # Telemetry, commands and updates share one MQTT connection per board (one client id each, never reconnected).
    log = (broker.workdir / "mosquitto.log").read_text()
    boards_connected = [c for c in re.findall(r"New client connected from \S+ as (\S+)", log) if c.startswith("edgec-test-")]
    assert sorted(boards_connected) == ["edgec-test-pi-1", "edgec-test-pi-2", "edgec-test-pi-3"], boards_connected


def test_a_canary_whose_parity_check_fails_halts_the_rollout(broker, fleet, fixture_bundle, tmp_path):
    boards = fleet(3)
    before = boards[0].version()
    drifted = shutil.copytree(fixture_bundle("onnx", "int8"), tmp_path / "drifted")
    with np.load(drifted / "golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files}
    golden["output_0"] = golden["output_0"] * 1.5 + 1.0  # the host's answers, as a board with other kernels sees them
    np.savez(drifted / "golden.npz", **golden)
    resum(drifted, "golden.npz")
    with link(broker) as fl:
        _members(fl, 3)
        result = push(fl, drifted, "digits", "group/lab", canary=1, timeout_s=60)
    assert result.halted and result.states == {"pi-1": "rolled_back"}
    assert "answers differ from the host's" in result.errors["pi-1"]
    time.sleep(1.0)
    assert [b.version() for b in boards] == [before] * 3  # the canary is back, the rest never moved


def test_signed_rollout_refuses_a_wrong_signature(broker, fleet, fixture_bundle, tmp_path):
    private, public, _ = new_keys(tmp_path / "keys" / "fleet")
    other, _, _ = new_keys(tmp_path / "keys" / "other")
    initial = shutil.copytree(fixture_bundle("onnx", "fp32"), tmp_path / "signed-initial")
    sign_bundle(initial, private)
    boards = []
    for i in range(2):
        board = Board(tmp_path, f"signed-{i}", broker, initial, trusted=public)
        boards.append(board.start())
    before = boards[0].version()
    try:
        stranger = shutil.copytree(fixture_bundle("onnx", "int8"), tmp_path / "stranger")
        sign_bundle(stranger, other)
        with link(broker) as fl:
            _members(fl, 2)
            result = push(fl, fixture_bundle("onnx", "int8"), "digits", "group/lab", timeout_s=30)
            assert result.states == {"signed-0": "refused", "signed-1": "refused"}  # an unsigned desired state
            assert all("unsigned control message" in e for e in result.errors.values())
        assert [b.version() for b in boards] == [before, before]
        with link(broker, signer=control_signer(private)) as fl:
            _members(fl, 2)
            result = push(fl, stranger, "digits", "group/lab", timeout_s=60)
            assert result.states == {"signed-0": "refused", "signed-1": "refused"}
            assert all("does not trust" in e for e in result.errors.values())
            # Signed, then a file changed and its sum re-written in the manifest: the signature no longer matches.
            tampered = shutil.copytree(fixture_bundle("onnx", "int8"), tmp_path / "tampered")
            sign_bundle(tampered, private)
            np.savez(tampered / "golden.npz", input_0=np.zeros((1, 1, 8, 8), np.float32))
            resum(tampered, "golden.npz")
            result = push(fl, tampered, "digits", "group/lab", timeout_s=60)
            assert result.states == {"signed-0": "refused", "signed-1": "refused"}
            assert all("manifest was changed after it was signed" in e for e in result.errors.values())
            good = shutil.copytree(fixture_bundle("onnx", "int8"), tmp_path / "good")
            sign_bundle(good, private)
            result = push(fl, good, "digits", "group/lab", timeout_s=60)
            assert result.states == {"signed-0": "live", "signed-1": "live"}, result.errors
    finally:
        for board in boards:
            board.stop()


@pytest.mark.slow
def test_broker_outage_and_sigkill_mid_transfer_resume_and_offline_boards_converge(broker, fleet, fixture_bundle,
                                                                                  tmp_path):
    boards = fleet(2)
    # A bundle big enough to take a while in 16 kB chunks: the int8 one with a large extra file.
    big = shutil.copytree(fixture_bundle("onnx", "int8"), tmp_path / "big")
    (big / "notes.bin").write_bytes(np.random.default_rng(0).bytes(16 * 2**20))
    resum(big, "notes.bin")
    offline = Board(tmp_path, "late", broker, fixture_bundle("onnx", "fp32"))
    reports = []  # every update report, in order (FleetLink keeps only the latest)
    import paho.mqtt.client as mqtt
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_connect = lambda c, u, f, r, p: c.subscribe("edgec/test/+/update/digits", qos=1)
    watcher.on_message = lambda c, u, m: reports.append(json.loads(m.payload)) if m.payload else None
    watcher.reconnect_delay_set(1, 1)
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    with link(broker) as fl:
        _members(fl, 2)
        done = {}
        pusher = threading.Thread(target=lambda: done.update(r=push(fl, big, "digits", "group/lab", timeout_s=240,
                                                                      chunk_size=16 * 1024)))
        pusher.start()
        # pi-2 is killed mid-transfer (a tenth of the chunks on its disk); then the broker goes away.
        assert Subscriber.wait(lambda: _chunks_done(boards[1]) > 0.1, 120), "pi-2 never got a tenth of the chunks"
        boards[1].stop(signal.SIGKILL)
        broker.stop()
        time.sleep(2)
        broker.start()
        boards[1].start()
        pusher.join(300)
        result = done["r"]
        assert result.states == {"pi-1": "live", "pi-2": "live"}, result.errors
        offline.start()  # a board that was off during the push converges when it comes
        assert fl.wait_for(lambda: (fl.updates.get(("late", "digits")) or {}).get("state") == "live", 120)
    watcher.loop_stop()
    offline.stop()
    assert [b.version() for b in boards] == [result.version] * 2
    # The killed board resumed from its last good chunk: after the restart it asked for less than the blob.
    mine = [r for r in reports if r["device"] == "pi-2" and r["rollout"] == result.rollout]
    resumed = max(r.get("resumed_from_chunk", 0) for r in mine if r["state"] == "downloading")
    verified = [r for r in mine if r["state"] == "verifying"]
    assert resumed > 0 and verified
    # What it took after the restart is what it lacked, not the whole blob again.
    assert resumed * 16 * 1024 + verified[-1]["received_bytes"] <= result.blob_bytes + 8 * 16 * 1024
    # The board that lived through the outage took each chunk once.
    survivor = [r for r in reports if r["device"] == "pi-1" and r["state"] == "verifying"]
    assert survivor[-1]["received_bytes"] <= result.blob_bytes


def test_rollback_puts_the_previous_version_back(broker, fleet, fixture_bundle):
    boards = fleet(2)
    before = boards[0].version()
    with link(broker) as fl:
        _members(fl, 2)
        first = push(fl, fixture_bundle("onnx", "fp32"), "digits", "group/lab", timeout_s=60)
        assert first.version == before
    # By hand, as an operator would: the CLI, from the push on.
    url = f"mqtt://127.0.0.1:{broker.port}"
    pushed = CliRunner().invoke(app, ["fleet", "push", str(fixture_bundle("onnx", "int8")), "--model", "digits",
                                      "--to", "group:lab", "--broker", url, "--fleet", "test", "--timeout", "60"])
    assert pushed.exit_code == 0, pushed.output
    assert "pi-1: live" in pushed.output and "pi-2: live" in pushed.output and "done in" in pushed.output
    for to, fleet_name, message in (("group:labs", "test", "its groups are lab"),
                                    ("group:lab", "tset", "no board of fleet 'tset' has reported")):
        empty = CliRunner().invoke(app, ["fleet", "push", str(fixture_bundle("onnx", "int8")), "--model", "digits",
                                         "--to", to, "--broker", url, "--fleet", fleet_name, "--timeout", "5"])
        assert empty.exit_code == 1 and message in empty.output, empty.output
    done = CliRunner().invoke(app, ["fleet", "rollback", "--model", "digits", "--to", "group:lab", "--broker", url,
                                    "--fleet", "test"])
    assert done.exit_code == 0 and f"desired version is {before} again" in done.output, done.output
    assert Subscriber.wait(lambda: [b.version() for b in boards] == [before] * 2, 60)
    shown = CliRunner().invoke(app, ["fleet", "status", "--model", "digits", "--broker", url, "--fleet", "test",
                                     "--json"])
    rows = json.loads(shown.stdout)
    assert shown.exit_code == 0 and {r["device"] for r in rows} == {"pi-1", "pi-2"}
    assert Subscriber.wait(lambda: all(r["running"] == before and r["state"] == "live" for r in json.loads(CliRunner().invoke(
        app, ["fleet", "status", "--broker", url, "--fleet", "test", "--json"]).stdout)), 30)
    again = CliRunner().invoke(app, ["fleet", "rollback", "--model", "digits", "--to", "group:nope", "--broker", url,
                                     "--fleet", "test"])
    assert again.exit_code == 1 and "nothing to roll back" in again.output


def test_a_bundle_too_big_for_the_board_is_refused_before_download(broker, tmp_path, fixture_bundle):
    board = Board(tmp_path, "small", broker, fixture_bundle("onnx", "int8"), top="budget_mb = 0.1\n").start()
    try:
        with link(broker) as fl:
            _members(fl, 1)
            result = push(fl, fixture_bundle("onnx", "fp32"), "digits", "device/small", timeout_s=60)
        assert result.states == {"small": "refused"} and "larger than this board's model budget" in result.errors["small"]
        assert not list((board.root / "store").glob(".downloads/*.part"))  # nothing was downloaded
    finally:
        board.stop()


def test_a_version_that_fails_its_first_requests_is_rolled_back(broker, tmp_path, fixture_bundle, digits_test):
    board = Board(tmp_path, "watched", broker, fixture_bundle("onnx", "fp32"), watch_s=30).start()
    before = board.version()
    try:
        with link(broker) as fl:
            _members(fl, 1)
            done = {}
            pusher = threading.Thread(target=lambda: done.update(
                r=push(fl, fixture_bundle("onnx", "int8"), "digits", "device/watched", timeout_s=90)))
            pusher.start()
            assert fl.wait_for(lambda: (fl.updates.get(("watched", "digits")) or {}).get("state") == "watching", 60)
            # The new version cannot answer in time: every request past its deadline is a 504.
            body = json.dumps({"inputs": digits_test.x[:1].tolist()}).encode()
            codes = []
            for _ in range(25):
                req = urllib.request.Request(f"{board.url}/v1/models/digits/predict", data=body, method="POST",
                                             headers={"Content-Type": "application/json", "X-Deadline-Ms": "0.001"})
                try:
                    urllib.request.urlopen(req, timeout=10)
                    codes.append(200)
                except urllib.error.HTTPError as err:
                    codes.append(err.code)
            pusher.join(120)
        assert codes.count(504) > 5
        result = done["r"]
        assert result.states == {"watched": "rolled_back"} and "requests failed" in result.errors["watched"]
        assert board.version() == before
    finally:
        board.stop()


def test_a_desired_state_carrying_a_path_deletes_and_fetches_nothing(broker, fleet, tmp_path):
    """Anyone who can publish on the broker: a version that is an absolute path, a traversal,
    a blob digest that climbs out of the store. The board refuses each and touches no folder."""
    import paho.mqtt.client as mqtt

    board = fleet(1)[0]
    before = board.version()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    blob = {"sha256": "0" * 64, "size": 10, "chunk_size": 10, "chunks": ["0" * 64]}
    attacks = [
        {"model": "digits", "version": str(victim), "rollout": "a1", "blob": blob},
        {"model": "digits", "version": "../../../victim", "rollout": "a2", "blob": blob},
        {"model": "digits", "version": "0123456789ab", "rollout": "a3", "blob": {**blob, "sha256": ("../" * 22)[:64]}},
    ]
    seen = Subscriber(broker.port, "watcher")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for attack in attacks:
            client.publish("edgec/test/desired/digits/group/lab", json.dumps(attack), qos=1,
                           retain=True).wait_for_publish(10)
            assert Subscriber.wait(lambda: any(m.get("rollout") == attack["rollout"] and m.get("state") == "refused"
                                               for m in seen.on("/pi-1/update/digits")), 30), seen.on("/update/digits")
    finally:
        seen.close()
        client.publish("edgec/test/desired/digits/group/lab", b"", qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
    assert (victim / "keep.txt").read_text() == "precious"
    assert board.version() == before
    store = board.root / "store"
    assert not list(store.rglob("*.part")) and not (store / "digits").exists()


class _UpdateWatcher:
    """The board's reported update states (one topic: the fleet's blobs are binary)."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="update-watcher")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload)) if m.payload else None
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert Subscriber.wait(lambda: self.client.is_connected(), 10)
        time.sleep(0.3)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_forged_replayed_and_stale_control_messages_change_nothing(broker, fixture_bundle, tmp_path):
    """An attacker on the broker with every message the fleet ever sent: replays of the old push
    (on its own topic and pinned at device level), an edited one, an expired one, one signed by
    another key. The board refuses each and stays; a signed rollback still works."""
    import paho.mqtt.client as mqtt

    from edgec.runtime.agent.control import seal
    from edgec.sdk.bundle.sign import load_private_key

    private, public, _ = new_keys(tmp_path / "keys" / "fleet")
    other, _, _ = new_keys(tmp_path / "keys" / "other")
    bundles = {}
    for name in ("fp32", "int8"):
        bundles[name] = shutil.copytree(fixture_bundle("onnx", name), tmp_path / f"signed-{name}")
        sign_bundle(bundles[name], private)
    board = Board(tmp_path, "pi-1", broker, bundles["fp32"], trusted=public).start()
    sent: list[dict] = []
    try:
        with link(broker, signer=control_signer(private)) as fl:
            _members(fl, 1)
            first = push(fl, bundles["int8"], "digits", "group/lab", timeout_s=60)
            sent.append(json.loads(json.dumps(fl.desired[("digits", "group/lab")])))
            assert first.states == {"pi-1": "live"}
            again = push(fl, bundles["fp32"], "digits", "group/lab", timeout_s=60)
            assert again.states == {"pi-1": "refused"} and "was replaced" in again.errors["pi-1"]
            second = push(fl, bundles["fp32"], "digits", "group/lab", timeout_s=60, rollback=True)
            assert second.states == {"pi-1": "live"}, second.errors
        live = board.version()
        old = sent[0]
        stranger = control_signer(other)
        now_topic = "edgec/test/desired/digits/group/lab"
        pin_topic = "edgec/test/desired/digits/device/pi-1"
        edited = {**old, "version": live[:-1] + ("0" if live[-1] != "0" else "1")}
        kid_other = stranger.key_id
        expired = seal({k: v for k, v in old.items() if k not in ("sig", "topic", "seq", "expires")}, now_topic,
                       load_private_key(private), old["sig"]["key_id"], ttl_s=-60)
        attacks = [
            (now_topic, old, "older"),  # the previous push, replayed where it was sent
            (pin_topic, old, "replayed on another topic"),  # ... and pinned at device level
            (pin_topic, {k: v for k, v in old.items() if k != "sig"}, "unsigned"),
            (now_topic, edited, "does not match"),
            (now_topic, expired, "expired"),
            (now_topic, stranger({k: v for k, v in old.items() if k not in ("sig", "topic", "seq", "expires")},
                                 now_topic), f"key '{kid_other}'"),
        ]
        watcher = _UpdateWatcher(broker.port, "edgec/test/pi-1/update/digits")
        attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
        attacker.connect("127.0.0.1", broker.port)
        attacker.loop_start()
        try:
            for topic, message, reason in attacks:
                attacker.publish(topic, json.dumps(message), qos=1, retain=True).wait_for_publish(10)
                assert Subscriber.wait(lambda: any(m.get("state") == "refused" and reason in (m.get("error") or "")
                                                   for m in watcher.messages), 30), (reason, watcher.messages[-3:])
                assert board.version() == live
            attacker.publish(pin_topic, b"", qos=1, retain=True).wait_for_publish(10)
        finally:
            watcher.close()
            attacker.loop_stop()
            attacker.disconnect()
        # What the attacker left retained on the group's topic is not the host's: it is neither rolled
        # back to nor kept as a previous version. The operator pushes again, then rolls back, signed.
        url = f"mqtt://127.0.0.1:{broker.port}"
        cli = ["--model", "digits", "--to", "group:lab", "--broker", url, "--fleet", "test", "--key", str(private)]
        refused = CliRunner().invoke(app, ["fleet", "rollback", *cli])
        assert refused.exit_code == 1 and "not signed by your key" in refused.output, refused.output
        again = CliRunner().invoke(app, ["fleet", "push", str(bundles["int8"]), *cli, "--timeout", "60"])
        assert again.exit_code == 1 and "was replaced on this board" in again.output, again.output
        back = CliRunner().invoke(app, ["fleet", "push", str(bundles["int8"]), *cli, "--timeout", "60", "--rollback"])
        assert back.exit_code == 0 and "pi-1: live" in back.output, back.output
        assert board.version() == first.version
    finally:
        board.stop()


def test_a_signed_release_older_than_the_newest_accepted_is_refused_unless_rolled_back(broker, fixture_bundle, tmp_path):
    """Anti-rollback by the release number signed into the manifest, for versions the board never ran."""
    private, public, _ = new_keys(tmp_path / "keys" / "fleet")
    made = {}
    for name, (fmt, precision, release) in {"a": ("onnx", "fp32", 200), "b": ("onnx", "int8", 100),
                                            "c": ("tflite", "int8", 300), "d": ("tflite", "fp32", 250)}.items():
        made[name] = shutil.copytree(fixture_bundle(fmt, precision), tmp_path / name)
        signed = CliRunner().invoke(app, ["sign", str(made[name]), "--key", str(private), "--release", str(release)])
        assert signed.exit_code == 0 and f"release {release}" in signed.output, signed.output
    board = Board(tmp_path, "pi-1", broker, made["a"], trusted=public).start()
    try:
        with link(broker, signer=control_signer(private)) as fl:
            _members(fl, 1)
            older = push(fl, made["b"], "digits", "group/lab", timeout_s=60)
            assert older.states == {"pi-1": "refused"} and "release 100, older than release 200" in older.errors["pi-1"]
            assert board.version() == bundle_version(made["a"])
            back = push(fl, made["b"], "digits", "group/lab", timeout_s=60, rollback=True)
            assert back.states == {"pi-1": "live"}, back.errors
            newer = push(fl, made["c"], "digits", "group/lab", timeout_s=60, any_device=True)  # rpi4's tflite
            assert newer.states == {"pi-1": "live"}, newer.errors
            between = push(fl, made["d"], "digits", "group/lab", timeout_s=60, any_device=True)
            assert between.states == {"pi-1": "refused"} and "older than release 300" in between.errors["pi-1"]
            assert board.version() == bundle_version(made["c"])
            assert not (board.root / "store" / "digits" / bundle_version(made["d"])).exists()
    finally:
        board.stop()


def test_a_fleet_board_without_trusted_keys_does_not_start_unless_told(tmp_path, fixture_bundle):
    from edgec.errors import ValidationError
    from edgec.runtime.config import ServeConfig

    shutil.copytree(fixture_bundle("onnx", "fp32"), tmp_path / "m")
    text = ('[[models]]\nname = "digits"\npath = "m"\n[telemetry]\nbroker = "127.0.0.1"\nfleet = "f"\ndevice = "d"\n'
            '[fleet]\ngroups = ["lab"]\nstore = "store"\n')
    (tmp_path / "runtime.toml").write_text(text)
    with pytest.raises(ValidationError, match="needs trusted_keys.*allow_unsigned = true"):
        ServeConfig.from_toml(tmp_path / "runtime.toml")
    refused = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "runtime.toml")])
    assert refused.exit_code == 1 and "allow_unsigned = true" in refused.output, refused.output
    (tmp_path / "runtime.toml").write_text(text + "allow_unsigned = true\n")
    assert ServeConfig.from_toml(tmp_path / "runtime.toml").fleet.allow_unsigned is True


def test_commands_to_a_signed_board_must_be_signed_once_and_a_flood_is_not_answered(broker, fixture_bundle, tmp_path):
    import paho.mqtt.client as mqtt

    private, public, _ = new_keys(tmp_path / "keys" / "fleet")
    initial = shutil.copytree(fixture_bundle("onnx", "fp32"), tmp_path / "signed")
    sign_bundle(initial, private)
    board = Board(tmp_path, "pi-1", broker, initial, trusted=public).start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    results = _UpdateWatcher(broker.port, "edgec/test/pi-1/cmd-result")
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    attacker.connect("127.0.0.1", broker.port)
    attacker.loop_start()
    try:
        signed = CliRunner().invoke(app, ["fleet", "command", "pi-1", "interval", "--arg", "seconds=2", "--broker", url,
                                          "--fleet", "test", "--key", str(private)])
        assert signed.exit_code == 0 and '"interval_s": 2.0' in signed.output, signed.output
        unsigned = CliRunner().invoke(app, ["fleet", "command", "pi-1", "interval", "--arg", "seconds=1",
                                            "--broker", url, "--fleet", "test", "--timeout", "3"])
        assert unsigned.exit_code == 1, unsigned.output
        assert Subscriber.wait(lambda: any("unsigned control message" in (m.get("error") or "")
                                           for m in results.messages), 10), results.messages
        # The same signed command, replayed: refused (its seq is not newer).
        from edgec.sdk.bundle.sign import control_signer as signer_for

        sign = signer_for(private)
        topic = "edgec/test/pi-1/cmd/interval"
        message = sign({"seconds": 3, "id": "replay"}, topic, ttl_s=300)
        for _ in range(2):
            attacker.publish(topic, json.dumps(message), qos=1).wait_for_publish(10)
        assert Subscriber.wait(lambda: any(m.get("id") == "replay" and m.get("ok") for m in results.messages), 10)
        time.sleep(1.5)
        assert sum(1 for m in results.messages if m.get("id") == "replay") == 1
        # A flood: 2,000 commands in a burst get a handful of answers, not 2,000 spooled refusals.
        before = len(results.messages)
        for i in range(2000):
            attacker.publish(topic, json.dumps({"seconds": 1, "id": i}), qos=0)
        time.sleep(4)
        assert len(results.messages) - before <= 10, len(results.messages) - before
        # After a restart the board still knows the newest command it took: the replay is refused again.
        board.stop()
        board.start()
        time.sleep(1.2)  # (refusals are answered at most once a second)
        attacker.publish(topic, json.dumps(message), qos=1).wait_for_publish(10)
        assert Subscriber.wait(lambda: any("older than" in (m.get("error") or "") or "replay" in (m.get("error") or "")
                                           for m in results.messages[before:]), 15), results.messages[-3:]
        assert sum(1 for m in results.messages if m.get("id") == "replay" and m.get("ok")) == 1
    finally:
        attacker.loop_stop()
        attacker.disconnect()
        results.close()
        board.stop()


def test_a_device_pin_is_shown_by_status_and_cleared_by_unpin(broker, fleet, fixture_bundle):
    boards = fleet(2)
    url = f"mqtt://127.0.0.1:{broker.port}"
    with link(broker) as fl:
        _members(fl, 2)
        group = push(fl, fixture_bundle("onnx", "fp32"), "digits", "group/lab", timeout_s=60)
        pin = push(fl, fixture_bundle("onnx", "int8"), "digits", "device/pi-1", timeout_s=60)
        assert pin.states == {"pi-1": "live"}
    shown = CliRunner().invoke(app, ["fleet", "status", "--model", "digits", "--broker", url, "--fleet", "test",
                                     "--json"])
    rows = {r["device"]: r for r in json.loads(shown.stdout)}
    assert rows["pi-1"]["pinned"] == pin.version and rows["pi-2"]["pinned"] is None
    cleared = CliRunner().invoke(app, ["fleet", "unpin", "pi-1", "--model", "digits", "--broker", url, "--fleet",
                                       "test"])
    assert cleared.exit_code == 0 and f"pin to {pin.version} cleared" in cleared.output, cleared.output
    assert Subscriber.wait(lambda: boards[0].version() == group.version, 60)


def test_a_bundle_for_another_architecture_is_refused_unless_pushed_for_any_device(broker, fleet, foreign_bundle):
    board = fleet(1)[0]
    before = board.version()
    url = f"mqtt://127.0.0.1:{broker.port}"
    device = json.loads((foreign_bundle / "manifest.json").read_text())["device"]  # these boards run on this host
    assert device["arch"] != host_arch()
    cli = ["fleet", "push", str(foreign_bundle), "--model", "digits", "--to", "group:lab", "--broker", url, "--fleet",
           "test", "--timeout", "60"]
    refused = CliRunner().invoke(app, cli)
    assert refused.exit_code == 1 and f"built for {device['name']} ({device['arch']})" in refused.output, refused.output
    assert "edgec convert --device" in refused.output and board.version() == before
    forced = CliRunner().invoke(app, [*cli, "--any-device"])
    assert forced.exit_code == 0 and "pi-1: live" in forced.output, forced.output


def test_rollback_right_after_the_first_push_returns_to_the_starting_version(broker, fleet, fixture_bundle):
    boards = fleet(2)
    before = boards[0].version()
    url = f"mqtt://127.0.0.1:{broker.port}"
    cli = ["--model", "digits", "--to", "group:lab", "--broker", url, "--fleet", "test"]
    pushed = CliRunner().invoke(app, ["fleet", "push", str(fixture_bundle("onnx", "int8")), *cli, "--timeout", "60"])
    assert pushed.exit_code == 0, pushed.output
    assert [b.version() for b in boards] != [before, before]
    back = CliRunner().invoke(app, ["fleet", "rollback", *cli])
    assert back.exit_code == 0 and f"desired version is {before} again" in back.output, back.output
    assert Subscriber.wait(lambda: [b.version() for b in boards] == [before, before], 60)
