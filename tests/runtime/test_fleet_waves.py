"""Rollouts in waves to `edgec serve` boards on a real mosquitto: a tag query through the installed CLI, and a
rollout whose failure rate passes the abort rate rolled back fleet-wide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.boards import Board
from helpers.broker import Mosquitto

from edgec.runtime.agent.admission import bundle_version
from edgec.sdk.fleet.link import FleetLink
from edgec.sdk.fleet.rollout import push

pytest.importorskip("paho.mqtt.client")
EDGEC = Path(sys.executable).parent / "edgec"


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def _start(boards: list[Board]) -> list[Board]:
    try:
        return [b.start() for b in boards]
    except BaseException:
        for b in boards:
            b.stop()
        raise


def _edgec(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGEC), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_push_where_tags_match_goes_in_waves_and_leaves_other_boards_alone(tmp_path, broker, fixture_bundle):
    initial, new = fixture_bundle("onnx", "fp32"), fixture_bundle("onnx", "int8")
    hw = {"pi-1": "rpi4", "pi-2": "rpi4", "pi-3": "rpi4", "jet-1": "orin"}
    boards = _start([Board(tmp_path, name, broker, initial, fleet_table=f'tags = {{hw = "{tag}", site = "shop-3"}}\n')
                     for name, tag in hw.items()])
    url = f"mqtt://127.0.0.1:{broker.port}"
    try:
        with FleetLink("127.0.0.1", broker.port, fleet="test") as link:
            assert link.wait_for(lambda: len(link.members) == 4, 30)
        none = _edgec("fleet", "push", str(new), "--model", "digits", "--to", "all", "--where", "hw=rpi5",
                      "--broker", url, "--fleet", "test")
        assert none.returncode == 1 and "has the tags hw=rpi5" in none.stderr and "hw=orin" in none.stderr
        pushed = _edgec("fleet", "push", str(new), "--model", "digits", "--to", "all", "--where", "hw=rpi4,site=shop-3",
                        "--waves", "1,50%", "--broker", url, "--fleet", "test", "--json")
        assert pushed.returncode == 0, pushed.stderr + pushed.stdout
        result = json.loads(pushed.stdout)
        assert result["waves"] == [["pi-1"], ["pi-2", "pi-3"]] and result["state"] == "done"
        assert result["states"] == {"pi-1": "live", "pi-2": "live", "pi-3": "live"}
        versions = {b.name: b.version() for b in boards}
        assert versions == {"pi-1": bundle_version(new), "pi-2": bundle_version(new), "pi-3": bundle_version(new),
                            "jet-1": bundle_version(initial)}
        shown = _edgec("fleet", "status", "--model", "digits", "--broker", url, "--fleet", "test")
        assert shown.returncode == 0, shown.stderr
        assert "to all where hw=rpi4,site=shop-3: done; waves 1: 1/1 live; 2: 2/2 live" in " ".join(shown.stdout.split())
    finally:
        for b in boards:
            b.stop()


@pytest.mark.slow
def test_failures_past_the_abort_rate_roll_the_rollout_back_fleet_wide(tmp_path, broker, fixture_bundle):
    initial, bigger = fixture_bundle("onnx", "int8"), fixture_bundle("onnx", "fp32")
    # pi-3's model budget is smaller than the fp32 model: it refuses the push, and that is a failed board.
    boards = _start([Board(tmp_path, name, broker, initial, top="budget_mb = 0.1\n" if name == "pi-3" else "")
                     for name in ("pi-1", "pi-2", "pi-3", "pi-4")])
    try:
        with FleetLink("127.0.0.1", broker.port, fleet="test") as link:
            assert link.wait_for(lambda: len(link.members) == 4, 30)
            result = push(link, bigger, "digits", "group/lab", waves="1,1", abort_rate=0.2, timeout_s=120)
            assert result.waves == [["pi-1"], ["pi-2"], ["pi-3", "pi-4"]]
            assert result.state == "rolled_back" and result.halted
            assert "1 of 4 boards failed (25%), over the abort rate 20%" in result.reason
            assert result.states["pi-3"] == "refused" and result.states["pi-1"] == "live"
            back = bundle_version(initial)
            assert link.wait_for(lambda: all(link.updates.get((d, "digits"), {}).get("running") == back
                                             and link.updates[(d, "digits")].get("state") == "live"
                                             for d in ("pi-1", "pi-2", "pi-4")), 60), link.updates
            assert link.rollouts["digits"]["state"] == "rolled_back"
            assert link.desired[("digits", "group/lab")]["rollback"] is True
            assert not [k for k in link.desired if k[1].startswith("device/")]  # the waves' pins are gone
        assert {b.name: b.version() for b in boards if b.name != "pi-3"} == dict.fromkeys(("pi-1", "pi-2", "pi-4"), back)
    finally:
        for b in boards:
            b.stop()
