"""The whole fleet on a real two-node MQTT cluster (aedes nodes joined through redis): boards on one node, the
host's tools and a dashboard's subscriber on the other. Rollout with a canary and a rollback, commands, telemetry
kept through the boards' node going away, and the dashboard, all through the installed `edgec` entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.boards import Board
from helpers.cluster import AedesCluster
from helpers.mqtt import Subscriber

from edgec.runtime.agent.admission import bundle_version

pytest.importorskip("paho.mqtt.client")
EDGEC = Path(sys.executable).parent / "edgec"


def _edgec(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGEC), *args], capture_output=True, text=True, timeout=timeout)


def _until(predicate, timeout_s: float) -> bool:
    return Subscriber.wait(predicate, timeout_s)


@pytest.mark.slow
def test_the_fleet_runs_on_a_two_node_cluster_with_boards_and_host_on_different_nodes(tmp_path, fixture_bundle):
    cluster = AedesCluster(tmp_path / "cluster").start()
    board_node, host_node = cluster.nodes
    url = f"mqtt://127.0.0.1:{host_node.port}"
    fleet = ["--broker", url, "--fleet", "test"]
    initial, new = fixture_bundle("onnx", "fp32"), fixture_bundle("onnx", "int8")
    boards: list[Board] = []
    dash = dashboard = None
    try:
        # What this cluster needs of a board (docs/fleet-scale.md): MQTT 3.1.1 (aedes speaks no MQTT 5; the host's
        # tools find that out by themselves) and clean sessions (aedes does not route a message published on
        # one node to a persistent session on another).
        needs = 'protocol = "3.1.1"\nsession_expiry_s = 0\n'
        dash = Subscriber(host_node.port, "cluster-dashboard", persistent=False)
        boards = [Board(tmp_path, f"pi-{i}", board_node, initial, telemetry=needs).start() for i in (1, 2, 3)]
        status = _edgec("fleet", "status", "--model", "digits", *fleet, "--json")
        assert status.returncode == 0, status.stderr
        assert _until(lambda: len(json.loads(_edgec("fleet", "status", *fleet, "--json").stdout)) == 3, 30)

        pushed = _edgec("fleet", "push", str(new), "--model", "digits", "--to", "group:lab", "--canary", "1", *fleet,
                        "--json")
        assert pushed.returncode == 0, pushed.stderr + pushed.stdout
        result = json.loads(pushed.stdout)
        assert result["canaries"] == ["pi-1"] and set(result["states"].values()) == {"live"}
        assert {b.version() for b in boards} == {bundle_version(new)}

        back = _edgec("fleet", "rollback", "--model", "digits", "--to", "group:lab", *fleet)
        assert back.returncode == 0, back.stderr + back.stdout
        assert _until(lambda: {b.version() for b in boards} == {bundle_version(initial)}, 60)

        answered = _edgec("fleet", "command", "pi-2", "interval", "--arg", "seconds=1", *fleet)
        assert answered.returncode == 0 and '"interval_s": 1.0' in answered.stdout, answered.stderr + answered.stdout

        # The boards' node goes away: their telemetry waits in their spools and arrives once it is back.
        assert _until(lambda: len(dash.on("pi-1/telemetry")) >= 2, 30)
        board_node.stop()
        gone = time.time()
        time.sleep(5)
        board_node.start()
        back_at = time.time()
        assert _until(lambda: any(m["time"] > back_at + 2 for m in dash.on("pi-1/telemetry")), 60)
        seqs = sorted({m["seq"] for m in dash.on("pi-1/telemetry")})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "telemetry was lost while the node was away"
        assert any(gone + 0.5 < m["time"] < back_at - 0.5 for m in dash.on("pi-1/telemetry")), \
            "nothing written during the outage arrived"

        dashboard = subprocess.Popen([str(EDGEC), "dashboard", *fleet[:2], "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=open(tmp_path / "dashboard.log", "wb"), text=True)
        address = re.search(r"http://127\.0\.0\.1:\d+/", dashboard.stdout.readline())
        assert address, (tmp_path / "dashboard.log").read_text()[-1000:]

        def shown() -> set[str]:
            with urllib.request.urlopen(address.group(0) + "api/fleet", timeout=5) as resp:
                return {b.get("device") for b in json.loads(resp.read())["boards"]}

        assert _until(lambda: {"pi-1", "pi-2", "pi-3"} <= shown(), 30)
    finally:
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(10)
        if dash is not None:
            dash.close()
        for b in boards:
            b.stop()
        cluster.stop()
