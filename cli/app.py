"""The typer application every command registers on, and what the commands share.

Every ``EdgecError`` becomes one line on stderr and exit code 1. Heavy frameworks load
only inside the commands that need them, so ``edgec --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional, TypeVar

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape

from .._version import __version__
from ..errors import EdgecError, InputError, first_line
from ..sdk.progress import Progress

# `edgec --help` lists commands in the order people use them, not the order modules register them.
WORK_ORDER = ("quickstart", "convert", "analyze", "compress", "qat", "run", "verify", "serve", "devices", "doctor",
              "keys", "sign", "fleet", "dashboard", "telemetry", "deploy")


class InWorkOrder(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORK_ORDER.index(n) if n in WORK_ORDER else len(WORK_ORDER))


app = typer.Typer(
    cls=InWorkOrder,
    name="edgec",
    help="Compress, convert and verify models for edge boards, and serve them there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])
# Piped output is read by people too: do not squeeze tables into 80 columns there.
out = Console() if sys.stdout.isatty() else Console(width=120)


def err_console() -> Console:
    """stderr for progress, on a duplicate of fd 2 so converter-output capture leaves it alone."""
    try:
        return Console(file=os.fdopen(os.dup(sys.stderr.fileno()), "w"), stderr=False)
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return Console(stderr=True)


def handles_errors(fn: F) -> F:
    """Turn EdgecError into one line and exit code 1; Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgecError as exc:
            typer.echo(f"error: {first_line(exc, 2000)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was written", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # a path the system refused (a file where a folder must be, /proc...)
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"error: {where}{exc.strerror or exc}: check the paths given", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class ConsoleProgress(Progress):
    """The CLI's :class:`~edgec.sdk.progress.Progress`: a spinner per stage, then ✓ or ✗ with its time;
    items done counted on the spinner; notes as bullets."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self._open: list[tuple[Any, str]] = []  # the spinners of the stages inside which we are

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.quiet:
            yield
            return
        start = time.perf_counter()
        try:
            with self.console.status(f"{escape(name)}...") as status:
                self._open.append((status, name))
                try:
                    yield
                finally:
                    self._open.pop()
        except BaseException:
            self.console.print(f"[red]✗[/] {escape(name)}")
            raise
        self.console.print(f"[green]✓[/] {escape(name)} [dim]({time.perf_counter() - start:.1f}s)[/]")

    def advance(self, done: int, total: int, what: str = "") -> None:
        if self._open:
            status, name = self._open[-1]
            status.update(f"{escape(name)}... {done}/{total} {escape(what)}".rstrip())

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"• {escape(text)}")


def floats(text: Optional[str], what: str) -> tuple[float, ...] | None:
    """``0.485,0.456,0.406`` as numbers, or a one-line error naming the option."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} {text!r} must be comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgec {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """edgec: take a trained model to an edge board and keep it running there.

    \b
    Typical use:
      edgec devices                                   # which boards edgec knows
      edgec convert model.pt2 --device rpi4 --calib calib.npz --out build/rpi4
      edgec run build/rpi4 --input sample.npz --output out.npz
      edgec quickstart                                # the whole path on real digits data
    """
