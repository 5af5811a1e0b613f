"""The wheel holds the whole package: every sub-package of the source tree and the data files it reads."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGE = {"tests", "benchmarks", "scripts", "docs", "deploy", "build", "dist", ".venv", ".git", ".ci"}


def _source_packages() -> set[str]:
    found = {"edgec"}
    for init in ROOT.rglob("__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts and parts[0] not in NOT_PACKAGE and not parts[0].endswith(".egg-info"):
            found.add(".".join(("edgec", *parts)))
    return found


def test_the_package_list_names_every_sub_package_of_the_source_tree():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    data_only = {p for p in listed if not (ROOT.joinpath(*p.split(".")[1:]) / "__init__.py").exists()}
    missing = _source_packages() - listed
    assert not missing, f"sub-packages the wheel would leave out (add them to pyproject.toml): {sorted(missing)}"
    assert not (listed - _source_packages() - data_only), "pyproject.toml lists packages that do not exist"


@pytest.mark.slow
def test_the_built_wheel_holds_every_module_and_data_file(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("edgec-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = set()
    for package in _source_packages():
        folder = ROOT.joinpath(*package.split(".")[1:])
        wanted |= {f"{package.replace('.', '/')}/{p.name}" for p in folder.glob("*.py")}
    wanted |= {"edgec/sdk/fleet/telemetry.schema.json", "edgec/sdk/fleet/web/index.html",
               "edgec/devices/profiles/rpi4.toml"}
    assert not wanted - names, sorted(wanted - names)[:20]


def test_tests_import_the_package_and_their_helpers_never_each_other_or_the_benchmarks():
    import ast

    others = {p.stem for p in (ROOT / "tests").rglob("test_*.py")} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    wrong = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            wrong += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in others]
        if re.search(r'sys\.path\.insert\([^\n]*"benchmarks"', path.read_text(encoding="utf-8")):
            wrong.append(f"{path.relative_to(ROOT)}: puts benchmarks/ on the path")
    assert not wrong, wrong
