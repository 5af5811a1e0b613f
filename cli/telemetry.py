"""``edgec telemetry watch``: the fleet's telemetry as a live table in the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import err_console, handles_errors

group = typer.Typer(help="Watch the telemetry edgec devices publish over MQTT.", no_args_is_help=True)


@group.command("watch")
@handles_errors
def telemetry_watch(
    broker: str = typer.Option(..., "--broker", "-b", help="The MQTT broker: mqtt://host:1883 or mqtts://host:8883 (as for edgec fleet and edgec dashboard)."),
    fleet: str = typer.Option("+", "--fleet", help="Only this fleet (+: every fleet)."),
    username: Optional[str] = typer.Option(None, "--username", help="Broker user."),
    password: Optional[str] = typer.Option(None, "--password", help="Broker password (or EDGEC_MQTT_PASSWORD).",
                                           envvar="EDGEC_MQTT_PASSWORD"),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="CA certificate: connect with TLS and verify the broker."),
    duration: float = typer.Option(0, "--duration", help="Stop after this many seconds and print the table (0: run until Ctrl-C)."),
) -> None:
    """A live table of every device and model publishing under edgec/<fleet>/<device>/.

    \b
    On a terminal: a table redrawn twice a second, the columns that fit its width. Piped or
    logged: one plain line of key=value words per device and model whenever it changes.
    \b
    Examples:
      edgec telemetry watch --broker mqtt://localhost:1883
      edgec telemetry watch --broker mqtt://localhost:1883 --duration 60 | grep state=offline
    """
    from rich.console import Console

    from ..sdk.fleet.watch import watch

    from ..sdk.fleet.link import parse_broker

    host, port, tls = parse_broker(broker)
    view = watch(host, port, fleet=fleet, username=username, password=password, ca_file=ca_file, tls=tls,
                 duration_s=duration, console=Console())  # a table on a terminal, plain lines when piped
    if not view.devices:
        err_console().print(f"no edgec device published on {host}:{port} under edgec/{fleet}/ in that time")
