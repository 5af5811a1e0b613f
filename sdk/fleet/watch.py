"""``edgec telemetry watch``: subscribe to a broker and show every device and model as a live table."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ...errors import BrokerError
from ...runtime.topics import device_topic
from ...runtime.agent.publisher import paho_client
from .view import FleetView


def host_client(*, client_id: str = "", username: str | None = None, password: str | None = None,
                tls: bool = False, ca_file: Path | None = None) -> Any:
    """A paho client (MQTT 5) for the host's fleet tools: credentials, and TLS when asked or given a CA."""
    mqtt = paho_client()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if tls or ca_file is not None:
        client.tls_set(ca_certs=str(ca_file) if ca_file is not None else None)
    return client


def connect(client: Any, broker: str, port: int, *, timeout_s: float = 10.0) -> None:
    """Connect, start paho's network thread and wait for the broker's answer.

    Raises:
        BrokerError: The broker cannot be reached, or refused the credentials or the TLS handshake.
    """
    answered, answer = threading.Event(), {}
    then = client.on_connect

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        answer["reason"] = reason
        answered.set()
        if then is not None and not getattr(reason, "is_failure", False):
            then(c, userdata, flags, reason, properties)

    client.on_connect = on_connect
    try:
        client.connect(broker, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot reach MQTT broker {broker}:{port}: {exc}; check the broker's host and port "
                          "(and --ca-file for a broker with its own CA)") from None
    client.loop_start()
    if not answered.wait(timeout_s):
        client.loop_stop()
        raise BrokerError(f"MQTT broker {broker}:{port} did not answer the connection in {timeout_s:.0f}s "
                          "(a TLS port spoken to without mqtts://, or the other way round?)")
    if getattr(answer["reason"], "is_failure", False):
        client.loop_stop()
        raise BrokerError(f"MQTT broker {broker}:{port} refused the connection: {answer['reason']}; "
                          "check --username and --password (or EDGEC_MQTT_PASSWORD)")


def subscribe(broker: str, port: int, view: FleetView, *, fleet: str = "+", username: str | None = None,
              password: str | None = None, tls: bool = False,
              ca_file: Path | None = None) -> tuple[Any, threading.Lock]:
    """A started paho client feeding every device message of ``fleet`` (see :class:`FleetView`) into ``view``.

    Returns:
        The client (stop it with ``loop_stop()`` and ``disconnect()``) and the lock that
        guards ``view``.

    Raises:
        BrokerError: The broker cannot be reached.
    """
    lock = threading.Lock()
    client = host_client(username=username, password=password, tls=tls, ca_file=ca_file)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.subscribe([(device_topic(fleet, "+", "+"), 1), (device_topic(fleet, "+", "update/+"), 1)])

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        with lock:
            view.update(message.topic, message.payload)

    client.on_connect = on_connect
    client.on_message = on_message
    connect(client, broker, port)
    return client, lock


def fleet_table(view: FleetView, title: str) -> Table:
    """One row per device and model: state, latency, rates, memory, spool."""
    def num(v: Any, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    table = Table(title=title)
    for col in ("fleet", "device", "state", "model", "version", "p50 ms", "p95 ms", "p99 ms", "req/s", "err/s",
                "queue", "RSS MB", "CPU %", "temp °C", "spooled", "dropped", "seen", "last event"):
        table.add_column(col, justify="left" if col in ("fleet", "device", "state", "model", "version", "last event")
                         else "right")
    for r in view.rows():
        state = {"online": "[green]online[/]", "offline": "[red]offline[/]"}.get(r["state"], r["state"])
        table.add_row(r["fleet"], r["device"], state, r["model"] or "-", r.get("version") or "-",
                      num(r.get("p50"), "{:.2f}"), num(r.get("p95"), "{:.2f}"), num(r.get("p99"), "{:.2f}"),
                      num(r.get("requests_per_s")), num(r.get("errors_per_s")), num(r.get("queue_depth"), "{}"),
                      num(r["rss_mb"]), num(r["cpu_percent"]), num(r["cpu_temp_c"]), num(r["spool"], "{}"),
                      num(r["dropped"], "{}"), f"{r['seen_s_ago']:.0f}s ago", (r["last_event"] or "")[:40])
    return table


def watch(broker: str, port: int = 1883, *, fleet: str = "+", username: str | None = None,
          password: str | None = None, ca_file: Path | None = None, tls: bool = False, duration_s: float = 0,
          console: Console | None = None) -> FleetView:
    """Draw the fleet live until ``duration_s`` passes (0: until Ctrl-C); return what was seen.

    Raises:
        BrokerError: The broker cannot be reached.
    """
    view = FleetView()
    client, lock = subscribe(broker, port, view, fleet=fleet, username=username, password=password,
                             tls=tls or ca_file is not None, ca_file=ca_file)
    console = console or Console()
    title = f"edgec devices on {broker}:{port}"
    stop = time.monotonic() + duration_s if duration_s > 0 else None
    try:
        with Live(fleet_table(view, title), console=console, refresh_per_second=2, transient=False) as live:
            while stop is None or time.monotonic() < stop:
                time.sleep(0.5)
                with lock:
                    live.update(fleet_table(view, title))
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return view
