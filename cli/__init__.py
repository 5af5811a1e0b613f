"""The ``edgec`` command line: thin commands that each call one SDK or runtime verb.

Example:
    $ edgec convert model.pt2 --device rpi4 --calib calib.npz --out build/rpi4
"""

from __future__ import annotations

from . import deploy, fleet, models, serving
from .app import app as app

# Importing a command module registers its commands on ``app``.
COMMAND_MODULES = (models, serving, fleet, deploy)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
