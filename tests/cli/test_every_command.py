"""Every command `edgec --help` lists is run end to end by some test (typer's runner over the real app,
or the installed entry point in a subprocess); its --help alone does not count."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from edgec.cli import app

TESTS = Path(__file__).resolve().parents[1]
# How tests call the CLI: CliRunner().invoke(app, [...]), the invoke(...) helpers, [*EDGEC, ...],
# [sys.executable, "-m", "edgec", ...], ["edgec", ...] and [str(edgec), ...] (the installed script).
CALLS = r'(?:str\((?:edgec|EDGEC)\),\s*|app,\s*\[|\binvoke\(|EDGEC,\s*|"edgec",\s*|\[\s*)'


def _leaves(command, path=()):
    children = getattr(command, "commands", None)
    if not children:
        yield path
        return
    for name, child in children.items():
        if not child.hidden:
            yield from _leaves(child, (*path, name))


def test_every_listed_command_has_an_end_to_end_test():
    commands = [path for path in _leaves(typer.main.get_command(app)) if path]
    assert len(commands) >= 18, commands  # the walk found the tree (groups included)
    sources = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py")
                        if p.name not in ("test_help.py", "test_every_command.py"))
    untested = []
    for path in commands:
        words = r",\s*".join(f'"{re.escape(word)}"' for word in path)
        # the words, then something that is not --help: a run, not a help page
        if not re.search(CALLS + words + r'(?!,\s*"--help")', sources):
            untested.append(" ".join(path))
    assert not untested, f"commands no test runs: {untested}"
