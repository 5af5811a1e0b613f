"""``edgec doctor``: what this machine can do, and what a device needs installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import handles_errors, out

commands = typer.Typer()  # doctor


@commands.command()
@handles_errors
def doctor(
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Also check what this device's bundles need here (name, alias or .toml)."),
    broker: Optional[str] = typer.Option(None, "--broker", "-b", help="Also check that this MQTT broker answers: mqtt://host:1883 or mqtts://host:8883."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="runtime.toml: check the broker its [telemetry] names, with its credentials."),
    username: Optional[str] = typer.Option(None, "--username", help="Broker user (with --broker)."),
    password: Optional[str] = typer.Option(None, "--password", help="Broker password (or EDGEC_MQTT_PASSWORD).", envvar="EDGEC_MQTT_PASSWORD"),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="CA certificate for an mqtts:// broker."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Say what this machine can do for edgec, and what to install for a device.

    \b
    Python, the CPU and its int8 instructions (VNNI, Arm dot product), free memory and disk,
    edgec's installed extras, onnxruntime's execution providers, the TFLite interpreter,
    accelerators (NVIDIA GPU, Jetson, Coral), and the broker when one is named. Exit code 1 when
    something the --device, --broker or --config asks for is missing.
    \b
    Examples:
      edgec doctor
      edgec doctor --device jetson-orin-nano
      edgec doctor --config /etc/edgec/runtime.toml
    """
    from ..runtime.doctor import broker as broker_check
    from ..runtime.doctor import report

    checks = report()
    asked = []
    if device is not None:
        from ..devices import get_profile
        from ..devices.doctor import device_checks

        asked += device_checks(get_profile(device))
    if config is not None:
        from ..runtime.config import ServeConfig

        telemetry = ServeConfig.from_toml(config).telemetry
        if telemetry is not None and telemetry.broker:
            from ..runtime.agent.publisher import read_secret

            secret = read_secret(telemetry.password_file) if telemetry.password_file else telemetry.password
            asked.append(broker_check(telemetry.broker, telemetry.port, tls=telemetry.tls or bool(telemetry.ca_file),
                                      username=telemetry.username, password=secret, ca_file=telemetry.ca_file))
    if broker is not None:
        from ..sdk.fleet.link import parse_broker

        host, port, tls = parse_broker(broker)
        asked.append(broker_check(host, port, tls=tls or ca_file is not None, username=username, password=password,
                                  ca_file=ca_file))
    checks += asked
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        table = Table(title="edgec doctor")
        for col in ("", "check", "found", "to do"):
            table.add_column(col, overflow="fold")
        marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]·[/]"}
        for c in checks:
            what = f"{c.area.removeprefix('device ')}: {c.what}" if c.area.startswith("device ") else c.what
            table.add_row(marks[c.ok], escape(what), escape(c.detail), escape(c.fix))
        out.print(table)
    if any(c.ok is False for c in asked):
        raise typer.Exit(1)
