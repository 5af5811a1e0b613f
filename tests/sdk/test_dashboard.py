"""``edgec dashboard``: a real Chromium shows two real boards' telemetry from a real mosquitto, live."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
from helpers.boards import Board  # noqa: E402
from helpers.broker import Mosquitto  # noqa: E402

from helpers.chromium import Chromium  # noqa: E402
from helpers.messages import model, status, telemetry, update  # noqa: E402
from edgec.sdk.fleet.dashboard import AlertRules, snapshot  # noqa: E402
from edgec.sdk.fleet.view import FleetView  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts"
BOARDS = "[...document.querySelectorAll('tbody[data-board]')]"


def _cells(browser: Chromium, board: str) -> dict[str, str]:
    return browser.evaluate(
        f"Object.fromEntries([...document.querySelectorAll('tbody[data-board=\"{board}\"] td[data-field]')]"
        ".map(td => [td.dataset.field, td.textContent]))")


def _dashboard(broker: Mosquitto, log: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "edgec", "dashboard", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                                "--port", "0"], stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert found, f"dashboard did not start: {line!r} {log.read_text()[-1000:]}"
    return process, found.group(0)


def test_chromium_shows_two_boards_live_and_one_going_offline(tmp_path, system_tool, digits_test):
    system_tool("chromium", "chromium")
    system_tool("mosquitto", "mosquitto")
    broker = Mosquitto(tmp_path / "broker").start()
    boards = [Board(tmp_path, name, broker, ROOT / "tests" / "fixtures" / "bundles" / "onnx-int8").start()
              for name in ("board-a", "board-b")]
    dashboard, url = _dashboard(broker, tmp_path / "dashboard.log")
    browser = Chromium(tmp_path / "chromium")
    stop = threading.Event()

    def traffic() -> None:  # board-a serves requests throughout; board-b stays idle
        i = 0
        while not stop.is_set():
            boards[0].predict(digits_test.x[i % 450:i % 450 + 1])
            i += 1
            time.sleep(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    try:
        browser.goto(url)
        browser.wait_for(f"{BOARDS}.filter(b => b.dataset.state === 'online').length === 2")
        # Online comes from the retained status, the model from the board's first telemetry message.
        browser.wait_for("document.querySelector(\"tbody[data-board='test/board-a'] td[data-field=model]\")"
                         ".textContent !== '–'")
        assert browser.evaluate(f"{BOARDS}.map(b => b.dataset.board).sort()") == ["test/board-a", "test/board-b"]
        first = _cells(browser, "test/board-a")
        assert first["model"] == "digits" and re.fullmatch(r"[0-9a-f]{12}", first["version"]), first
        assert float(first["rss_mb"]) > 10 and first["cache_mb"].endswith("/ 512"), first

        sender.start()
        # Numbers change without a reload: board-a's request rate and latency appear, its uptime moves.
        browser.wait_for("Number(document.querySelector(\"tbody[data-board='test/board-a'] "
                         "td[data-field=requests_per_s]\").textContent) > 5", timeout_s=30)
        later = _cells(browser, "test/board-a")
        assert later["uptime_s"] != first["uptime_s"]
        assert float(later["p50_ms"]) > 0 and float(later["p95_ms"]) >= float(later["p50_ms"]), later
        assert _cells(browser, "test/board-b")["requests_per_s"] == "0.0"
        assert browser.wait_for("document.querySelector(\"figure[data-board='test/board-a']\").dataset.points > 3")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard.png")

        # An alert from a board is shown as text, never as markup.
        import paho.mqtt.publish as publish

        hostile = "cache is full <img src=x onerror=\"document.title='owned'\">"
        publish.single("edgec/test/board-b/events", json.dumps({"seq": 1, "schema": 1, "time": time.time(), "versions": {},
                       "kind": "memory_pressure", "message": hostile}), hostname="127.0.0.1", port=broker.port)
        text = browser.wait_for("[...document.querySelectorAll('#alerts li')].map(li => li.textContent)"
                                ".find(t => t.includes('cache is full'))")
        assert hostile in text and browser.evaluate("document.querySelectorAll('#alerts img').length") == 0
        assert browser.evaluate("document.title") == "edgec fleet"

        # A board that stops is shown offline (its retained status), with an alert, live.
        boards[1].stop()
        browser.wait_for("document.querySelector(\"tbody[data-board='test/board-b']\").dataset.state === 'offline'")
        assert browser.evaluate("[...document.querySelectorAll('#alerts li.offline')].map(li => li.dataset.board)") \
            == ["test/board-b"]
        assert browser.evaluate("document.getElementById('summary').textContent").startswith("1 of 2 boards online")
        browser.screenshot(ARTIFACTS / "dashboard-offline.png")
    finally:
        stop.set()
        browser.close()
        dashboard.terminate()
        dashboard.wait(10)
        for board in boards:
            board.stop()
        broker.stop()
    assert dashboard.returncode in (0, -15)


def test_the_page_works_offline_its_files_ship_with_edgec():
    page = (ROOT / "sdk" / "fleet" / "web" / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page must not load anything from the network"
    for name in ("dashboard.js", "dashboard.css"):
        assert f"/static/{name}" in page and (ROOT / "sdk" / "fleet" / "web" / name).is_file()
    assert "innerHTML" not in (ROOT / "sdk" / "fleet" / "web" / "dashboard.js").read_text()


def _feed(view: FleetView, topic: str, message: dict) -> None:
    assert view.update(topic, json.dumps(message).encode())


def test_alerts_from_what_the_boards_report():
    view = FleetView()
    now = time.time()
    _feed(view, "edgec/f/full/status", status())
    _feed(view, "edgec/f/full/telemetry", telemetry("full", "f", time=now, interval_s=1,
                                                    cache={"used_bytes": 95, "budget_bytes": 100},
                                                    models={"m": model(p50=1, p95=2, errors_per_s=0.5)}))
    _feed(view, "edgec/f/full/update/m", update("m", "full", "rolled_back", error="parity failed"))
    _feed(view, "edgec/f/gone/status", status("offline"))
    _feed(view, "edgec/f/quiet/status", status())
    _feed(view, "edgec/f/quiet/telemetry", telemetry("quiet", "f", time=now, interval_s=1, models={}))
    view.devices[("f", "quiet")]["seen"] = now - 60
    state = snapshot(view, AlertRules(memory_fraction=0.9))
    kinds = sorted((a["board"], a["kind"]) for a in state["alerts"])
    assert kinds == [("f/full", "errors"), ("f/full", "memory"), ("f/full", "rollout"), ("f/gone", "offline"),
                     ("f/quiet", "offline")]
    full = next(b for b in state["boards"] if b["id"] == "f/full")
    assert full["models"][0]["history"][0][1:] == [1, 2] and full["models"][0]["update"]["state"] == "rolled_back"
    assert next(b for b in state["boards"] if b["id"] == "f/quiet")["state"] == "silent"
    assert not view.update("edgec/f/x/telemetry", b"not json") and view.malformed == 1


def test_dashboard_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run([sys.executable, "-m", "edgec", "dashboard", "--broker", "mqtt://127.0.0.1:1",
                                 "--port", str(busy.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot serve the dashboard on 127.0.0.1" in result.stderr and "Traceback" not in result.stderr


def test_beyond_loopback_the_dashboard_needs_its_token_in_a_browser_and_from_scripts(tmp_path, system_tool):
    import http.client

    system_tool("chromium", "chromium")
    system_tool("mosquitto", "mosquitto")
    refused = subprocess.run([sys.executable, "-m", "edgec", "dashboard", "--broker", "mqtt://127.0.0.1:1", "--host",
                              "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--token" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    broker = Mosquitto(tmp_path / "broker").start()
    token = "5f0c1e5d9a7b4c3e"
    process = subprocess.Popen([sys.executable, "-m", "edgec", "dashboard", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                                "--host", "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE,
                               stderr=open(tmp_path / "dashboard.log", "wb"), text=True,
                               env={**__import__("os").environ, "EDGEC_DASHBOARD_TOKEN": token})
    browser = None
    try:
        line = process.stdout.readline()
        found = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=", line)
        assert found and token not in line, line  # the token is not printed
        port = int(found.group(1))

        def get(path: str, **headers: str) -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path, headers=headers)
            return connection.getresponse()

        assert get("/health").status == 200
        for path in ("/", "/api/fleet", "/events", "/static/dashboard.js", f"/?token={token}x"):
            assert get(path).status == 401, path
        assert get("/api/fleet", Authorization="Bearer nope").status == 401
        fleet = get("/api/fleet", Authorization=f"Bearer {token}")
        assert fleet.status == 200 and json.loads(fleet.read())["boards"] == []
        entered = get(f"/?token={token}")
        cookie = entered.getheader("set-cookie")
        assert entered.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get("/api/fleet", Cookie=cookie.split(";")[0]).status == 200

        browser = Chromium(tmp_path / "chromium")
        browser.goto(f"http://127.0.0.1:{port}/?token={token}")  # once; then the cookie carries it, events included
        browser.wait_for("Number(document.body?.dataset.updates || 0) >= 1")  # body is null mid-redirect
        assert browser.evaluate("location.search") == "" and "127.0.0.1" in browser.evaluate(
            "document.getElementById('source').textContent")
    finally:
        if browser is not None:
            browser.close()
        process.terminate()
        process.wait(10)
        broker.stop()
