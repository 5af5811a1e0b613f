"""The ``edgec`` command line: thin commands that each call one SDK or runtime verb.

Each module owns its commands: ``commands`` (a Typer whose commands sit at the top level) and/or
``group`` (a sub-command group). They are put together here, explicitly, not by importing.

Example:
    $ edgec convert model.pt2 --device rpi4 --calib calib.npz --out build/rpi4
"""

from __future__ import annotations

from . import dashboard, deploy, devices, doctor, fleet, keys, models, serve, telemetry
from .app import app as app

for _module in (models, serve, doctor, keys, dashboard):  # quickstart, convert, analyze, compress, qat, run;
    # serve, verify; doctor; sign; dashboard
    app.registered_commands.extend(_module.commands.registered_commands)
for _name, _module in (("devices", devices), ("keys", keys), ("fleet", fleet), ("telemetry", telemetry),
                       ("deploy", deploy)):
    app.add_typer(_module.group, name=_name)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
