"""A dashboard that bad telemetry cannot break: non-finite numbers, wrong types and fake devices
are refused, counted and shown as one alert; boards not heard from leave the view."""

from __future__ import annotations

import json
import time

import pytest

from helpers.messages import model, status, telemetry

from edgec.sdk.fleet.dashboard import snapshot
from edgec.sdk.fleet.view import FleetView

GOOD = telemetry()


@pytest.mark.parametrize("payload", [
    json.dumps(GOOD).replace('"rss_bytes": 1048576', '"rss_bytes": Infinity').encode(),
    json.dumps(GOOD).replace('"cpu_percent": 3.0', '"cpu_percent": NaN').encode(),
    json.dumps({**GOOD, "time": "1e999"}).replace('"1e999"', "1e999").encode(),
    json.dumps({**GOOD, "models": {"digits": model(p50="fast")}}).encode(),
    json.dumps({**GOOD, "models": ["digits"]}).encode(),
    json.dumps({**GOOD, "process": "big"}).encode(),
    json.dumps({**GOOD, "seq": 0}).encode(),  # valid JSON, valid types: outside the schema's range
    json.dumps({k: v for k, v in GOOD.items() if k != "spool"}).encode(),  # a required field missing
    json.dumps({**GOOD, "models": {"digits": model(version="../../etc")}}).encode(),  # not a bundle version
    b'[1, 2]',
    b'\xff\xfe',
    b'[' * 100_000,
    json.dumps({**GOOD, "pad": "x" * (2 << 20)}).encode(),  # 2 MB: refused before it is decoded
])
def test_a_bad_retained_message_is_refused_and_the_snapshot_stays_strict_json(payload):
    view = FleetView()
    assert view.update("edgec/shop/pi-1/telemetry", json.dumps(GOOD).encode())
    assert not view.update("edgec/shop/pi-2/telemetry", payload)
    data = snapshot(view)
    json.dumps(data, allow_nan=False)  # strict JSON: the page's JSON.parse takes it
    assert [b["id"] for b in data["boards"]] == ["shop/pi-1"]
    assert data["malformed"] == 1 and any(a["kind"] == "invalid" and "pi-2" in a["message"] for a in data["alerts"])


def test_devices_not_heard_from_leave_the_view():
    view = FleetView(forget_after_s=3600)
    for i in range(50):
        view.update(f"edgec/shop/fake-{i}/status", json.dumps(status()).encode())
    for d in view.devices.values():
        d["seen"] = time.time() - 7200
    view._pruned = time.monotonic() - 120  # the once-a-minute sweep is due
    view.update("edgec/shop/real/status", json.dumps(status()).encode())
    assert list(view.devices) == [("shop", "real")]


def test_the_hosts_fleet_link_drops_what_boards_cannot_have_sent():
    """Retained junk on the broker (lists, strings for groups, answers nobody asked for) never reaches
    status, group membership or the command results."""
    from types import SimpleNamespace

    pytest.importorskip("paho.mqtt.client")
    from edgec.sdk.fleet.link import FleetLink, status

    link = FleetLink("127.0.0.1", 1, fleet="shop")
    junk = [("shop/pi-1/fleet", b'{"device": "pi-1", "groups": "lab", "models": [1], "started": 5}'),
            ("shop/pi-7/fleet", json.dumps({"device": "pi-7", "groups": ["lab"], "pad": "x" * (2 << 20)}).encode()),
            ("shop/pi-2/fleet", b'[1, 2, 3]'), ("shop/pi-3/update/digits", b'"live"'),
            ("shop/pi-4/cmd-result", b'{"id": [1], "ok": true}'), ("shop/pi-4/cmd-result", b'{"id": "nobody-asked"}'),
            ("shop/pi-5/fleet", b'[' * 100_000), ("shop/pi-6/fleet", b'\xff')]
    for topic, payload in junk:
        link._on_message(None, None, SimpleNamespace(topic=f"edgec/{topic}", payload=payload))
    assert link.group_members("group/lab") == [] and link.group_members("group/l") == []
    assert set(link.members) == {"pi-1"} and link.updates == {} and link.results == {}
    assert status(link) == []


def test_what_a_board_names_reaches_the_terminal_as_text_not_escapes_or_markup():
    """A model name and an event a board sends are printed by `telemetry watch`: a terminal escape or rich
    markup in them must arrive as plain characters, in the table and in the piped key=value lines."""
    import io
    import json

    from rich.console import Console

    from edgec.sdk.fleet.watch import fleet_table, plain_line

    hostile = "\x1b[2J[bold red]owned[/] x"
    view = FleetView()
    assert view.update("edgec/shop/pi-1/status", json.dumps(status()).encode())
    assert view.update("edgec/shop/pi-1/telemetry", json.dumps(telemetry(models={hostile: model()})).encode())
    rows = view.rows()
    assert [r["model"] for r in rows] == [hostile]
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(fleet_table(view, "t"))
    drawn = out.getvalue()
    assert "\x1b" not in drawn and "[bold red]owned[/]" in drawn.replace("\n", "")  # shown, not obeyed
    line = plain_line(rows[0])
    assert "\x1b" not in line and 'model="?[2J[bold red]owned[/] x"' in line, line


def test_the_fleets_own_topic_levels_never_become_boards():
    """A publisher on `edgec/<fleet>/rollouts/...` or `.../blobs/...` shaped like a board's topics is not a board;
    a malformed rollout record is not kept."""
    from types import SimpleNamespace

    pytest.importorskip("paho.mqtt.client")
    from edgec.sdk.fleet.link import FleetLink

    view = FleetView()
    assert not view.update("edgec/shop/rollouts/status", json.dumps(status()).encode())
    assert not view.update("edgec/shop/blobs/telemetry", json.dumps(GOOD).encode())
    assert view.devices == {}
    link = FleetLink("127.0.0.1", 1, fleet="shop")
    for topic, payload in [("rollouts/fleet", b'{"device": "x", "groups": ["lab"]}'),
                           ("rollouts/update/digits", b'{"state": "live"}'), ("rollouts/digits/x", b'{"a": 1}'),
                           ("blobs/fleet", b'{"groups": ["lab"]}'), ("rollouts/digits", b'[1]')]:
        link._on_message(None, None, SimpleNamespace(topic=f"edgec/shop/{topic}", payload=payload))
    assert link.members == {} and link.updates == {} and link.rollouts == {"fleet": {"device": "x", "groups": ["lab"]}}
