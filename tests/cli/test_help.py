"""Every command's --help renders and teaches: examples intact (no markup swallowed), no heavy imports."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from edgec.cli import app


def _every(command, path=()):
    yield list(path)
    for name, child in (getattr(command, "commands", None) or {}).items():
        yield from _every(child, (*path, name))


COMMANDS = list(_every(typer.main.get_command(app)))  # the root, every group and every command


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgec")
def test_help_renders(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "Usage: edgec" in result.output


def test_serve_help_shows_its_example_config_whole():
    output = CliRunner().invoke(app, ["serve", "--help"], terminal_width=120).output
    assert "[batcher]" in output and "[[models]]" in output and "[]" not in output


def test_commands_are_listed_in_the_order_people_use_them():
    output = CliRunner().invoke(app, ["--help"], terminal_width=100).output
    listed = re.findall(r"^│ ([a-z]+) ", output, flags=re.M)
    assert listed[:8] == ["quickstart", "convert", "analyze", "compress", "qat", "run", "verify", "serve"], listed


def test_bracketed_text_in_option_help_is_shown():
    output = CliRunner().invoke(app, ["convert", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: build/<device>]" in output and "scaled to [0,1]" in output
    output = CliRunner().invoke(app, ["fleet", "push", "--help"], env={"COLUMNS": "200"}).output
    assert "([[models]] name)" in output


def test_the_runtime_toml_in_serve_help_is_one_the_runtime_takes(tmp_path):
    import textwrap
    import tomllib

    from edgec.cli.serve import serve
    from edgec.runtime.config import ServeConfig

    doc = serve.__doc__
    example = textwrap.dedent(doc[doc.index("Example runtime.toml:") + len("Example runtime.toml:"):]).strip()
    example = example.replace("\\[", "[")  # help text escapes brackets for rich
    (tmp_path / "build" / "rpi4").mkdir(parents=True)
    config = ServeConfig.from_dict(tomllib.loads(example), base=tmp_path)
    assert [m.name for m in config.models] == ["digits"] and config.admin_token
