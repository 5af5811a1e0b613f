"""``edgec telemetry watch``: subscribe to a broker and show every device and model as a live table."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ...runtime.topics import device_topic
from ...runtime.agent.publisher import open_client
from ...runtime.agent.publisher import mqtt_client as host_client
from .view import FleetView


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

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.subscribe([(device_topic(fleet, "+", "+"), 1), (device_topic(fleet, "+", "update/+"), 1)])

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        with lock:
            view.update(message.topic, message.payload)

    def make(protocol: str) -> Any:
        client = host_client(username=username, password=password, tls=tls, ca_file=ca_file, protocol=protocol)
        client.on_connect = on_connect
        client.on_message = on_message
        return client

    return open_client(make, broker, port), lock


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(value: Any) -> str:
    """A string a board sent, safe to print: no control characters (terminal escapes), no rich markup."""
    return escape(_CONTROL.sub("?", str(value)))


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


# (header, cell, wide-only): the narrow set fits 80 columns; the rest shows from WIDE columns up.
COLUMNS: tuple[tuple[str, Any, bool], ...] = (
    ("fleet", lambda r: _text(r["fleet"]), True),
    ("device", lambda r: _text(r["device"]), False),
    ("state", lambda r: _text(r["state"]), False),
    ("model", lambda r: _text(r["model"] or "-"), False),
    ("version", lambda r: _text(r.get("version") or "-"), True),
    ("p50 ms", lambda r: _num(r.get("p50"), "{:.2f}"), True),
    ("p95 ms", lambda r: _num(r.get("p95"), "{:.2f}"), False),
    ("p99 ms", lambda r: _num(r.get("p99"), "{:.2f}"), True),
    ("req/s", lambda r: _num(r.get("requests_per_s")), False),
    ("err/s", lambda r: _num(r.get("errors_per_s")), False),
    ("queue", lambda r: _num(r.get("queue_depth"), "{}"), True),
    ("drift", lambda r: _num(r.get("drift"), "{:.2f}"), True),
    ("RSS MB", lambda r: _num(r["rss_mb"], "{:.0f}"), False),
    ("CPU %", lambda r: _num(r["cpu_percent"]), True),
    ("temp °C", lambda r: _num(r["cpu_temp_c"]), True),
    ("spooled", lambda r: _num(r["spool"], "{}"), True),
    ("dropped", lambda r: _num(r["dropped"], "{}"), True),
    ("seen", lambda r: f"{r['seen_s_ago']:.0f}s ago", False),
    ("last event", lambda r: _text((r["last_event"] or "")[:40]), True),
)
# The same figures unformatted for plain lines (the table's cells are escaped for rich).
PLAIN: tuple[tuple[str, Any], ...] = (
    ("version", lambda r: r.get("version")), ("p50 ms", lambda r: _num(r.get("p50"), "{:.2f}")),
    ("p95 ms", lambda r: _num(r.get("p95"), "{:.2f}")), ("p99 ms", lambda r: _num(r.get("p99"), "{:.2f}")),
    ("req/s", lambda r: _num(r.get("requests_per_s"))), ("err/s", lambda r: _num(r.get("errors_per_s"))),
    ("queue", lambda r: _num(r.get("queue_depth"), "{}")), ("drift", lambda r: _num(r.get("drift"), "{:.2f}")),
    ("RSS MB", lambda r: _num(r["rss_mb"], "{:.0f}")),
    ("CPU %", lambda r: _num(r["cpu_percent"])), ("temp °C", lambda r: _num(r["cpu_temp_c"])),
    ("spooled", lambda r: _num(r["spool"], "{}")), ("dropped", lambda r: _num(r["dropped"], "{}")),
    ("last event", lambda r: r["last_event"]),
)
WIDE = 160
TEXT_COLUMNS = ("fleet", "device", "state", "model", "version", "seen", "last event")


def fleet_table(view: FleetView, title: str, width: int = WIDE) -> Table:
    """One row per device and model: state, latency, rates, memory; below ``WIDE`` columns, the ones that
    fit 80 (device, state, model, p95, req/s, err/s, RSS, seen)."""
    columns = [c for c in COLUMNS if width >= WIDE or not c[2]]
    table = Table(title=title)
    for name, _, _ in columns:
        table.add_column(name, justify="left" if name in TEXT_COLUMNS else "right", no_wrap=name == "device")
    for r in view.rows():
        cells = [cell(r) for _, cell, _ in columns]
        state = columns.index(next(c for c in columns if c[0] == "state"))
        cells[state] = {"online": "[green]online[/]", "offline": "[red]offline[/]"}.get(r["state"], cells[state])
        table.add_row(*cells)
    return table


def plain_line(row: dict[str, Any]) -> str:
    """One device and model as a line of ``key=value`` words, for logs and pipes (``| grep``)."""
    def word(value: Any) -> str:  # what a board sent: no control characters, quoted when it has spaces
        text = _CONTROL.sub("?", str(value))
        return json.dumps(text) if not text or any(c.isspace() or c == '"' for c in text) else text

    words = [time.strftime("%Y-%m-%dT%H:%M:%S"), f"{word(row['fleet'])}/{word(row['device'])}",
             f"state={word(row['state'])}", f"model={word(row['model'] or '-')}"]
    words += [f"{name.replace(' ', '_').replace('/', '_per_').replace('°', '')}={word(value)}"
              for name, value in ((n, raw(row)) for n, raw in PLAIN) if value not in (None, "")]
    return " ".join(words)


def watch(broker: str, port: int = 1883, *, fleet: str = "+", username: str | None = None,
          password: str | None = None, ca_file: Path | None = None, tls: bool = False, duration_s: float = 0,
          console: Console | None = None) -> FleetView:
    """Draw the fleet live until ``duration_s`` passes (0: until Ctrl-C); return what was seen.

    On a terminal it is a table redrawn twice a second, narrowed to the terminal's width; piped or
    logged, a plain line per device and model each time what it reports changes.

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
        if console.is_terminal:
            with Live(fleet_table(view, title, console.width), console=console, refresh_per_second=2,
                      transient=False) as live:
                while stop is None or time.monotonic() < stop:
                    time.sleep(0.5)
                    with lock:
                        live.update(fleet_table(view, title, console.width))
        else:
            _print_changes(view, lock, stop)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return view


def _print_changes(view: FleetView, lock: threading.Lock, stop: float | None) -> None:
    printed: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    while True:
        with lock:
            rows = view.rows()
        for r in rows:
            key = (r["fleet"], r["device"], r["model"] or "")
            seen = tuple(v for k, v in sorted(r.items()) if k != "seen_s_ago")
            if printed.get(key) != seen:
                printed[key] = seen
                print(plain_line(r), flush=True)
        if stop is not None and time.monotonic() >= stop:
            return
        time.sleep(0.5)
