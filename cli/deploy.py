"""Board installation: ``edgec deploy install`` writes the runtime's systemd unit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import err_console, handles_errors, out

group = typer.Typer(help="Install the runtime on a board as a service: `edgec deploy install --config runtime.toml`.",
                    no_args_is_help=True)

@group.command("install")
@handles_errors
def deploy_install(
    config: Path = typer.Option(..., "--config", "-c", help="The board's runtime.toml (checked, bundles included)."),
    name: str = typer.Option("edgec", "--name", help="Unit name: NAME.service."),
    user: Optional[str] = typer.Option(None, "--user", help="Run as this existing user (default: DynamicUser, a user "
                                       "systemd makes at start)."),
    unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--unit-dir", help="Where to write the unit."),
    memory_mb: Optional[int] = typer.Option(None, "--memory-mb", help="MemoryMax in MB (default: the bundles' "
                                            "device profile's model RAM plus the process's share)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the unit and the commands; write nothing."),
    force: bool = typer.Option(False, "--force", help="Replace a unit that exists."),
) -> None:
    """Install `edgec serve --config CONFIG` as a hardened systemd service.

    \b
    The unit runs as its own user (DynamicUser, or --user), sees the system read-only
    (ProtectSystem=strict) with its state under /var/lib/edgec, restarts on failure, and is
    memory-capped from the device profile the bundles were built for.
    \b
    Examples:
      sudo edgec deploy install --config /etc/edgec/runtime.toml
      edgec deploy install --config runtime.toml --dry-run
    """
    from ..runtime.install import build_unit, install_unit

    unit = build_unit(config, name=name, user=user, unit_dir=unit_dir, memory_mb=memory_mb)
    err = err_console()
    for warning in unit.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if dry_run:
        out.print(f"# {escape(str(unit.path))} (dry run: nothing written)", highlight=False)
        out.print(escape(unit.text), highlight=False, soft_wrap=True)
        out.print("# then:\n" + "\n".join(f"#   {c}" for c in unit.commands()), highlight=False)
        return
    path = install_unit(unit, force=force)
    out.print(f"wrote {escape(str(path))} (MemoryMax {unit.memory_max_mb} MB). Start it now and at every boot:",
              highlight=False)
    for command in unit.commands():
        out.print(f"  {command}", highlight=False)
