"""Every command's --help renders and teaches: examples intact (no markup swallowed), no heavy imports."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgec.cli import app

COMMANDS = [[], ["convert"], ["analyze"], ["compress"], ["run"], ["serve"], ["quickstart"], ["devices"],
            ["devices", "show"], ["telemetry", "watch"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgec")
def test_help_renders(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "Usage: edgec" in result.output


def test_serve_help_shows_its_example_config_whole():
    output = CliRunner().invoke(app, ["serve", "--help"], terminal_width=120).output
    assert "[batcher]" in output and "[[models]]" in output and "[]" not in output
