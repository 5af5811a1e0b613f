"""Thousands of boards on one broker (or the two-node cluster): where a fleet's cost grows.

Run by hand: ``.venv/bin/python benchmarks/fleet_scale.py --boards 1000,5000,10000``
(``--broker cluster`` for the aedes cluster of ``tests/helpers/cluster.py``; ``--delivery
chunks,url``). Each simulated board runs edgec's real board code over its own MQTT connection:
the publisher with its SQLite spool, the telemetry agent (every ``--interval`` s) and the update
agent, which downloads the bundle (chunks from the broker, or by URL from nginx), checks every
chunk's sha256, unpacks it and reports. Only the model behind them is a stub
(:class:`SimRuntime`: ``reload`` records the version instead of loading onnxruntime). Boards
live in worker processes (``--per-process``), each board's threads as in ``edgec serve`` except
paho's network thread: one :class:`shared_loop.SharedLoop` per process moves every board's bytes.
Ten thousand boards are ~40,000 threads: the kernel's ``pid_max`` must allow them
(``sysctl kernel.pid_max=131072``; the benchmark says so when it is lower).

Measured, per fleet size and delivery:

- time until the host sees every board (their retained membership messages);
- ``edgec fleet push`` (the host's real push): time until every board is live, and the host
  process's CPU seconds and peak RSS;
- broker bytes sent during the push, per board (mosquitto's ``$SYS/broker/bytes/sent``), and the
  CPU seconds the broker and the simulated boards spent during it (/proc): on a small host the
  boards' CPU, not the broker, sets the push's wall time;
- ``edgec fleet status --json`` and ``edgec dashboard`` (until its page lists every board):
  wall time, CPU seconds and peak RSS of each process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

EDGEC = Path(sys.executable).parent / "edgec"
BUNDLE = ROOT / "tests" / "fixtures" / "bundles" / "onnx-int8"
INITIAL = ROOT / "tests" / "fixtures" / "bundles" / "onnx-fp32"


class SimRuntime:
    """The runtime as the telemetry and update agents see it, with no model behind it."""

    class _Cache:
        trusted = None  # unsigned control messages: the simulator's fleet is allow_unsigned
        budget_bytes = 1 << 30

        def __init__(self) -> None:
            self.path: str | None = None

        def peek(self, model: str) -> Any:
            return None if self.path is None else type("Loaded", (), {"path": self.path})()

        def describe(self) -> dict[str, Any]:
            return {"budget_bytes": self.budget_bytes, "used_bytes": 0, "loaded": [],
                    "stats": {"hits": 0, "misses": 0, "evictions": 0, "load_failures": 0}}

    def __init__(self, config: Any, version: str) -> None:
        self.config, self.version, self.started = config, version, time.time()
        self.cache = self._Cache()
        self.latency: dict[str, Any] = {}
        self.batchers = {"digits": None}
        self.alert_listeners: list[Any] = []
        self.health_checks: dict[str, Any] = {}

    def running_version(self, model: str) -> str | None:
        return self.version

    def reload(self, model: str, path: str | None = None) -> str:
        from edgec.runtime.agent.admission import bundle_version

        self.cache.path = path
        self.version = bundle_version(Path(path)) if path else self.version
        return self.version

    def alert(self, message: str, kind: str = "alert") -> None:
        for listener in list(self.alert_listeners):
            listener(message, kind)

    def stats(self) -> dict[str, Any]:
        return {"uptime_s": time.time() - self.started, "cache": self.cache.describe(),
                "batchers": {"digits": {"queue_depth": 0, "stats": {"batch_sizes": {}, "rejected": 0}}},
                "latency": {}}


def worker(args: argparse.Namespace) -> None:
    """Run ``args.count`` boards until stdin closes; print one line when all are connected."""
    from edgec.runtime.agent.admission import bundle_version
    from edgec.runtime.agent.telemetry import Telemetry
    from edgec.runtime.agent.updates import Updater
    from edgec.runtime.config import ModelConfig
    from edgec.runtime.fleet_config import FleetConfig, TelemetryConfig

    from shared_loop import SharedLoop

    logging.getLogger("edgec").setLevel(logging.ERROR)  # allow_unsigned's warning, a thousand times
    threading.stack_size(512 * 1024)  # four threads a board: 8 MB stacks each would be 320 GB of address space
    network = SharedLoop()
    root = Path(args.root)
    version = bundle_version(INITIAL)
    boards = []
    for i in range(args.first, args.first + args.count):
        name = f"b{i:05d}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        telemetry = TelemetryConfig(broker="127.0.0.1", port=args.port, fleet="scale", device=name,
                                    spool=folder / "spool.sqlite", interval_s=args.interval, reconnect_max_s=5,
                                    keepalive_s=args.keepalive,
                                    protocol=args.protocol, session_expiry_s=0 if args.protocol == "3.1.1" else 3600,
                                    homeassistant=False)
        fleet = FleetConfig(groups=("all-boards",), store=folder / "store", watch_requests=0, watch_s=0,
                            allow_unsigned=True, blob_urls=tuple(args.blob_urls))
        runtime = SimRuntime(type("Config", (), {"models": (ModelConfig("digits", INITIAL),)})(), version)
        agent = Telemetry(telemetry, runtime)
        client = agent.publisher.client
        client.loop_start = lambda client=client: network.adopt(client)  # this process's one network thread
        agent.start()
        Updater(runtime, telemetry, fleet, agent.publisher).start()
        boards.append(agent)
        if len(boards) % 25 == 0:  # boards come up a few at a time, as a fleet's do, not all in one instant
            _wait_connected(boards[-25:], 60)
    _wait_connected(boards, 600)
    print(json.dumps({"connected": sum(a.publisher.connected for a in boards)}), flush=True)
    sys.stdin.read()  # the benchmark closes it to stop the boards
    os._exit(0)  # thousands of threads: no orderly teardown needed for a measurement


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds the processes have used so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _wait_connected(boards: list[Any], timeout_s: float) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and not all(a.publisher.connected for a in boards):
        time.sleep(0.1)


def _usage(command: list[str], until: Any = None) -> dict[str, float]:
    """Run ``command``; its wall time, CPU seconds and peak RSS (from wait4)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read() if until is None else until(process)
    _, status, usage = os.wait4(process.pid, 0)
    return {"wall_s": time.monotonic() - started, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "output": output}


def _dashboard(url: str, boards: int) -> Any:
    def until(process: subprocess.Popen) -> str:
        line = process.stdout.readline()
        address = line[line.index("http://"):].split()[0]
        deadline = time.monotonic() + 300
        seen = 0
        while time.monotonic() < deadline and seen < boards:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(address + "api/fleet", timeout=30) as resp:
                    seen = len(json.loads(resp.read())["boards"])
            except OSError:
                continue
        process.terminate()
        return str(seen)
    return _usage([str(EDGEC), "dashboard", "--broker", url, "--fleet", "scale", "--port", "0"], until)


class BytesSent:
    """mosquitto's ``$SYS/broker/bytes/sent``, as it publishes it every second."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.value = 0.0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("$SYS/broker/bytes/sent")
        self.client.on_message = lambda c, u, m: setattr(self, "value", float(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def settled(self) -> float:
        time.sleep(2.5)  # the next two $SYS updates
        return self.value


def run(n: int, delivery: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from helpers.broker import Mosquitto
    from helpers.cluster import AedesCluster
    from helpers.webserver import Nginx

    from edgec.sdk.fleet.link import FleetLink
    from edgec.sdk.fleet.rollout import push

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cluster = broker = None
    if args.broker == "cluster":
        cluster = AedesCluster(work / "cluster").start()
        board_port, host_port = cluster.nodes[0].port, cluster.nodes[1].port
    else:
        broker = Mosquitto(work / "broker", conf="listener {port} 127.0.0.1\nallow_anonymous true\n"
                           "sys_interval 1\nmax_queued_messages 0\nmax_inflight_messages 0\n")
        broker.conf.write_text(broker.conf.read_text().replace("{port}", str(broker.port)))
        broker.start()
        board_port = host_port = broker.port
    web = Nginx(work / "nginx", work / "www").start() if delivery == "url" else None
    (work / "www").mkdir(exist_ok=True)
    workers: list[subprocess.Popen] = []
    row: dict[str, Any] = {"boards": n, "delivery": delivery, "broker": args.broker}
    try:
        started = time.monotonic()
        for first in range(0, n, args.per_process):
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", "--port", str(board_port), "--first", str(first),
                 "--count", str(min(args.per_process, n - first)), "--root", str(work / "boards"),
                 "--interval", str(args.interval), "--protocol", args.protocol, "--keepalive", str(args.keepalive),
                 *(["--blob-urls", web.url] if web else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        connected = sum(json.loads(w.stdout.readline())["connected"] for w in workers)
        row["connect_s"] = round(time.monotonic() - started, 1)
        row["connected"] = connected
        url = f"mqtt://127.0.0.1:{host_port}"
        with FleetLink("127.0.0.1", host_port, fleet="scale") as link:
            seen = time.monotonic()
            link.wait_for(lambda: len(link.members) >= n, 300)
            row["host_sees_all_s"] = round(time.monotonic() - seen, 1)
            sent = BytesSent(host_port) if broker is not None else None
            before = sent.settled() if sent else None
            brokers = [broker.process.pid] if broker else [node.process.pid for node in cluster.nodes]
            broker0, boards0 = _cpu_s(brokers), _cpu_s([w.pid for w in workers])
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.monotonic()
            result = push(link, BUNDLE, "digits", "group/all-boards", timeout_s=args.timeout,
                          **({"blob_dir": work / "www", "blob_url": web.url} if web else {}))
            row["push_s"] = round(time.monotonic() - t0, 1)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            row["push_cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)
            row["host_rss_mb"] = round(cpu1.ru_maxrss / 1024)
            row["broker_cpu_s"] = round(_cpu_s(brokers) - broker0, 1)
            row["boards_cpu_s"] = round(_cpu_s([w.pid for w in workers]) - boards0)
            row["live"] = sum(s == "live" for s in result.states.values())
            if broker is not None:  # boards the broker dropped as dead (keep-alive): a reconnect storm, if many
                row["keepalive_drops"] = (work / "broker" / "mosquitto.log").read_text().count("exceeded timeout")
            if sent is not None:
                row["broker_kb_per_board"] = round((sent.settled() - before) / n / 1024, 1)
        status = _usage([str(EDGEC), "fleet", "status", "--broker", url, "--fleet", "scale", "--json"])
        row["status_s"], row["status_cpu_s"], row["status_rss_mb"] = (
            round(status["wall_s"], 1), round(status["cpu_s"], 1), round(status["rss_mb"]))
        row["status_rows"] = len(json.loads(status["output"] or "[]"))
        dash = _dashboard(url, n)
        row["dashboard_s"], row["dashboard_cpu_s"], row["dashboard_rss_mb"] = (
            round(dash["wall_s"], 1), round(dash["cpu_s"], 1), round(dash["rss_mb"]))
        row["dashboard_boards"] = int(dash["output"])
    finally:
        for w in workers:
            w.stdin.close()
        for w in workers:
            w.wait(60)
        if web:
            web.stop()
        if broker:
            broker.stop()
        if cluster:
            cluster.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default="1000,5000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--delivery", default="chunks,url", help="chunks (on the broker), url (nginx), or both")
    parser.add_argument("--broker", choices=("mosquitto", "cluster"), default="mosquitto")
    parser.add_argument("--per-process", type=int, default=250, help="boards per worker process")
    parser.add_argument("--interval", type=float, default=30.0, help="each board's telemetry interval (s)")
    # A real board has a CPU of its own; here thousands share two cores, and during a push a board's keep-alive
    # can wait behind its neighbours' chunks longer than 1.5 x 30 s: the broker would call it dead.
    parser.add_argument("--keepalive", type=int, default=300, help="the simulated boards' MQTT keep-alive (s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a push waits for every board")
    parser.add_argument("--protocol", default=None, help="the boards' MQTT protocol (default: 5, 3.1.1 on the cluster)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--port", "--first", "--count"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--blob-urls", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.protocol = args.protocol or ("3.1.1" if args.broker == "cluster" else "5")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a broker with 10,000 connections needs the fds
    if args.worker:
        return worker(args)
    threads = 5 * max(int(x) for x in args.boards.split(","))
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if threads > pid_max:
        sys.exit(f"{args.boards} boards need ~{threads} threads but kernel.pid_max is {pid_max}: "
                 f"raise it (sysctl kernel.pid_max=131072) or simulate fewer boards")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-scale-") as tmp:
        for n in (int(x) for x in args.boards.split(",")):
            for delivery in args.delivery.split(","):
                row = run(n, delivery, args, Path(tmp) / f"{n}-{delivery}")
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    keys = ["boards", "delivery", "broker", "connect_s", "host_sees_all_s", "push_s", "live", "keepalive_drops", "push_cpu_s",
            "host_rss_mb", "broker_cpu_s", "boards_cpu_s", "broker_kb_per_board", "status_s", "status_cpu_s", "status_rss_mb", "dashboard_s",
            "dashboard_cpu_s", "dashboard_rss_mb", "dashboard_boards"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "-")) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
