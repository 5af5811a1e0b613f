"""MQTT telemetry with the on-disk spool, measured against a real local mosquitto.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/telemetry.py``.
Needs Debian's ``mosquitto`` (``scripts/bootstrap.sh`` installs it). On this host:

1. sustained throughput: one producer thread publishes 256-byte messages as fast as the
   spool takes them for ``--seconds``; the rate counts only messages the broker has
   acknowledged (and the spool deleted), and a subscriber confirms it received them all;
2. the spool alone (no broker): how fast messages are written to disk;
3. a backlog: 20,000 messages spooled while the broker is down, the spool's size on disk,
   and how fast the backlog drains once the broker is back.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.broker import Mosquitto  # noqa: E402

from edgec.runtime.fleet_config import TelemetryConfig
from edgec.runtime.agent.publisher import Publisher, paho_client  # noqa: E402

PAYLOAD = 256


def _payload(i: int) -> bytes:
    head = b'{"schema":1,"i":%d,"pad":"' % i
    return head + b"x" * (PAYLOAD - len(head) - 2) + b'"}'


class _Counter:
    """A subscriber on the same broker counting what arrives."""

    def __init__(self, port: int) -> None:
        mqtt = paho_client()
        self.seqs: set[int] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=False)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("edgec/#", qos=1)
        self.client.on_message = lambda c, u, m: self.seqs.add(int(m.payload[7:m.payload.index(b",")]))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        time.sleep(0.5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait(predicate, timeout: float) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until and not predicate():
        time.sleep(0.01)
    return predicate()


def sustained(root: Path, seconds: float) -> dict:
    broker = Mosquitto(root / "broker").start()
    counter = _Counter(broker.port)
    cfg = TelemetryConfig(broker="127.0.0.1", port=broker.port, fleet="bench", device="pi", spool=root / "s1.db",
                          window=256)
    pub = Publisher(cfg).start()
    _wait(lambda: pub.connected, 10)
    topic = cfg.topic("telemetry")
    peak_disk = [0]
    stop = time.perf_counter() + seconds
    start = time.perf_counter()
    n = 0
    while time.perf_counter() < stop:
        pub.publish(topic, _payload(n))
        n += 1
        if n % 1000 == 0:
            peak_disk[0] = max(peak_disk[0], pub.spool.disk_bytes())
    produced = time.perf_counter() - start
    drained = _wait(lambda: len(pub.spool) == 0, 120)
    acked_at = time.perf_counter() - start
    received = _wait(lambda: len(counter.seqs) >= n, 60)
    result = {"messages": n, "produce_rate": n / produced, "acked_rate": n / acked_at, "drained": drained,
              "received_all": received and len(counter.seqs) == n, "peak_disk_bytes": peak_disk[0],
              "disk_bytes_after": pub.spool.disk_bytes()}
    pub.stop()
    counter.close()
    broker.stop()
    return result


def spool_only(root: Path, count: int = 20_000) -> dict:
    cfg = TelemetryConfig(broker=None, fleet="bench", device="pi", spool=root / "s2.db")
    pub = Publisher(cfg)
    topic = cfg.topic("telemetry")
    start = time.perf_counter()
    for i in range(count):
        pub.publish(topic, _payload(i))
    took = time.perf_counter() - start
    result = {"messages": count, "write_rate": count / took, "disk_bytes": pub.spool.disk_bytes()}
    pub.stop(flush_s=0)
    return result


def backlog(root: Path, count: int = 20_000) -> dict:
    broker = Mosquitto(root / "broker3")
    cfg = TelemetryConfig(broker="127.0.0.1", port=broker.port, fleet="bench", device="pi", spool=root / "s3.db",
                          reconnect_max_s=1)
    pub = Publisher(cfg).start()  # no broker yet: everything waits on disk
    topic = cfg.topic("telemetry")
    for i in range(count):
        pub.publish(topic, _payload(i))
    disk = pub.spool.disk_bytes()
    broker.start()
    counter = _Counter(broker.port)
    _wait(lambda: pub.connected, 30)
    start = time.perf_counter()
    drained = _wait(lambda: len(pub.spool) == 0, 120)
    took = time.perf_counter() - start
    received = _wait(lambda: len(counter.seqs) >= count, 60)
    result = {"messages": count, "disk_bytes": disk, "bytes_per_message": disk / count, "drain_rate": count / took,
              "drained": drained, "received_all": received and len(counter.seqs) == count}
    pub.stop()
    counter.close()
    broker.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        live = sustained(root, args.seconds)
        alone = spool_only(root)
        back = backlog(root)
    t = Table(title=f"Sustained QoS 1 publishing through the spool to a local mosquitto, {PAYLOAD} B messages, "
                    f"{args.seconds:g} s (goal ≥ 2,000 msg/s)")
    for col in ("messages", "spooled / s", "acknowledged / s", "all received", "peak spool on disk", "spool after"):
        t.add_column(col, justify="right")
    t.add_row(f"{live['messages']:,}", f"{live['produce_rate']:,.0f}", f"{live['acked_rate']:,.0f}",
              "yes" if live["received_all"] else "NO", f"{live['peak_disk_bytes'] / 2**20:.1f} MB",
              f"{live['disk_bytes_after'] / 2**20:.1f} MB")
    console.print(t)
    t = Table(title="The spool on its own, and a backlog built while the broker is down")
    for col in ("case", "messages", "rate", "spool on disk", "per message", "all received"):
        t.add_column(col, justify="left" if col == "case" else "right")
    t.add_row("spool writes, no broker", f"{alone['messages']:,}", f"{alone['write_rate']:,.0f} msg/s written",
              f"{alone['disk_bytes'] / 2**20:.1f} MB", f"{alone['disk_bytes'] / alone['messages']:.0f} B", "-")
    t.add_row("backlog drained after the broker returns", f"{back['messages']:,}",
              f"{back['drain_rate']:,.0f} msg/s acknowledged", f"{back['disk_bytes'] / 2**20:.1f} MB",
              f"{back['bytes_per_message']:.0f} B", "yes" if back["received_all"] else "NO")
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps({"sustained": live, "spool_only": alone, "backlog": back}, indent=2) + "\n")


if __name__ == "__main__":
    main()
