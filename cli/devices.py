"""``edgec devices``: the device profiles."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .app import handles_errors, out

group = typer.Typer(help="List device profiles, or show one with `edgec devices show NAME`.", invoke_without_command=True)


@group.callback()
@handles_errors
def devices(ctx: typer.Context) -> None:
    """Show a table of the built-in device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from ..devices import builtin_profiles

    table = Table(title="Device profiles (--device takes a name or an alias)")
    for col in ("name", "also", "format", "precision", "int8 fast", "threads", "model RAM", "accel"):
        table.add_column(col, no_wrap=col == "name")
    for p in builtin_profiles().values():
        table.add_row(
            p.name, ", ".join(p.aliases[:2]), p.format, p.precision, "yes" if p.int8_speedup else "no",
            str(p.threads), f"{p.model_ram_mb} MB", p.accelerator,
        )
    out.print(table)
    out.print("Your own board: copy a profile from `edgec devices show NAME --toml` and pass it with --profile board.toml")


@group.command("show")
@handles_errors
def devices_show(
    name: str = typer.Argument(..., help="Device name, alias, or path to a .toml profile."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON."),
    as_toml: bool = typer.Option(False, "--toml", help="Print the profile file, to copy and edit for your board."),
) -> None:
    """Show every field of one device profile."""
    from ..devices import get_profile

    profile = get_profile(name)
    data = profile.to_dict()
    if as_toml:
        typer.echo(Path(profile.source).read_text(encoding="utf-8"), nl=False)
        return
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"{profile.name}: {profile.description}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in data.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    table.add_row("file", profile.source)
    out.print(table)


