"""``edgec dashboard`` with a big fleet: N boards' retained status and telemetry on a real mosquitto.

Run by hand: ``.venv/bin/python benchmarks/dashboard.py [--boards 10000]``. The script publishes,
retained, one status and one telemetry message per board (each validated by the dashboard
against docs/telemetry.schema.json as it arrives) plus a share of invalid ones, starts the real
``edgec dashboard`` process, and prints a table: how long until every board is in the view,
``GET /api/fleet`` rendered afresh (a second after the last: median and max of 5) and from the
render every client shares (right after another: median of 5), the answer's size, and the
dashboard's RSS.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.messages import model, status, telemetry  # noqa: E402  (whole, valid board messages)
from helpers.broker import Mosquitto  # noqa: E402

from edgec.runtime.agent.publisher import paho_client  # noqa: E402


def publish_fleet(port: int, boards: int, invalid: int) -> None:
    mqtt = paho_client()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-filler")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    pending = []
    for i in range(boards):
        name = f"pi-{i:05d}"
        models = {"digits": model(p50=1 + i % 7, p95=2 + i % 7), "detector": model(version="abcdef012345")}
        pending.append(client.publish(f"edgec/big/{name}/status", json.dumps(status()), qos=1, retain=True))
        pending.append(client.publish(f"edgec/big/{name}/telemetry", json.dumps(telemetry(name, "big", models)),
                                      qos=1, retain=True))
    for i in range(invalid):  # what an attacker left retained: wrong types, out of range, NaN
        bad = [json.dumps({**telemetry(f"bad-{i}", "big"), "seq": 0}), '{"schema": 1, "state": 5}',
               json.dumps(telemetry(f"bad-{i}", "big")).replace('"cpu_percent": 3.0', '"cpu_percent": NaN')][i % 3]
        pending.append(client.publish(f"edgec/big/bad-{i}/{'status' if i % 3 == 1 else 'telemetry'}", bad,
                                      qos=1, retain=True))
    for info in pending:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=10_000)
    parser.add_argument("--invalid", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        dashboard = None
        try:
            started = time.perf_counter()
            publish_fleet(broker.port, args.boards, args.invalid)
            published = time.perf_counter() - started
            dashboard = subprocess.Popen([sys.executable, "-m", "edgec", "dashboard", "--broker",
                                          f"mqtt://127.0.0.1:{broker.port}", "--port", "0"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            started = time.perf_counter()
            url = re.search(r"http://\S+/", dashboard.stdout.readline()).group(0) + "api/fleet"
            while True:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    state = json.loads(resp.read())
                if len(state["boards"]) >= args.boards and state["malformed"] >= args.invalid:
                    break
                time.sleep(0.2)
            loaded = time.perf_counter() - started
            fresh, shared, size = [], [], 0
            for _ in range(5):
                for times in (fresh, shared):
                    if times is fresh:
                        time.sleep(1.1)  # the shared render is a second old: this request renders
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(url, timeout=60) as resp:
                        size = len(resp.read())
                    times.append((time.perf_counter() - t0) * 1000)
            rss = psutil.Process(dashboard.pid).memory_info().rss / 2**20
        finally:
            if dashboard is not None:
                dashboard.terminate()
                dashboard.wait(10)
            broker.stop()
    print(f"\n{'boards':>7} {'invalid':>7} {'published':>9} {'all in view':>11} {'/api/fleet rendered':>19} "
          f"{'max':>7} {'shared':>7} {'answer':>8} {'RSS':>7}")
    print(f"{args.boards:7d} {state['malformed']:7d} {published:8.1f}s {loaded:10.1f}s {statistics.median(fresh):17.0f}ms "
          f"{max(fresh):5.0f}ms {statistics.median(shared):5.0f}ms {size / 2**20:6.1f}MB {rss:6.0f}MB")


if __name__ == "__main__":
    main()
