"""``edgec dashboard``: the fleet live in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import handles_errors, out
from .fleet import BROKER, CA, PASSWORD, USER

commands = typer.Typer()  # dashboard


@commands.command()
@handles_errors
def dashboard(
    broker: str = BROKER,
    fleet: str = typer.Option("+", "--fleet", help="Only this fleet (+: every fleet on the broker).", envvar="EDGEC_FLEET"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve the page on (0.0.0.0: every interface)."),
    port: int = typer.Option(8090, "--port", "-p", help="Port to serve the page on (edgec serve takes 8080)."),
    username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    memory_alert: float = typer.Option(0.9, "--memory-alert", min=0.01, max=1.0,
                                       help="Flag a board whose model cache uses this share of its budget."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EDGEC_DASHBOARD_TOKEN",
                                        help="Asked of visitors (open /?token=TOKEN once); required with a --host beyond loopback."),
    forget_after: float = typer.Option(24.0, "--forget-after", min=0.01, help="Hours without a message after which a board leaves the page."),
) -> None:
    """Serve a live web page of the fleet: every board, its models, latency, alerts and rollouts.

    \b
    The page updates itself (server-sent events) from the boards' telemetry on the broker;
    its script and style ship with edgec, so it works without internet. Open the address it
    prints in a browser; Ctrl-C stops it. Served beyond this machine (--host 0.0.0.0) it needs
    --token: open http://HOST:PORT/?token=TOKEN once, scripts send Authorization: Bearer TOKEN.
    \b
    Example:
      edgec dashboard --broker mqtt://localhost:1883 --port 8090
      edgec dashboard --broker mqtt://localhost:1883 --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from ..sdk.fleet.dashboard import AlertRules, serve
    from ..sdk.fleet.link import parse_broker

    mqtt_host, mqtt_port, tls = parse_broker(broker)
    shown = f"[{host}]" if ":" in host else host
    try:
        serve(mqtt_host, mqtt_port, fleet=fleet, host=host, http_port=port, username=username, password=password,
              tls=tls, ca_file=ca_file, rules=AlertRules(memory_fraction=memory_alert), token=token,
              forget_after_s=forget_after * 3600,
              on_ready=lambda bound: out.print(f"dashboard on http://{shown}:{bound}/{'?token=…' if token else ''} "
                                               f"(edgec/{fleet}/ on {broker}); Ctrl-C stops it"))
    except KeyboardInterrupt:
        pass
