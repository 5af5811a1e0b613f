"""Every command and code block in README.md and docs/*.md runs here, page by page, in one workspace.

A page's blocks run in order, as a reader would type them: ``bash`` blocks in bash (``-e``, in
the workspace, the venv's ``edgec`` and ``python`` first on the PATH), ``python`` blocks each in a
fresh interpreter. What the comment just before a block says decides how it is tested:

- ``<!-- doc-test: file NAME -->``: the block is a file the reader saves; it is written as NAME
  (a later block runs or reads it). A ``runtime.toml`` is also parsed by the runtime's own loader.
- ``<!-- doc-test: background -->``: a server (``edgec serve``, ``edgec dashboard``) started and
  stopped at the end of the page; ``after-background``: retried until the server answers.
- ``<!-- doc-test: help -->``: scripts run by hand for minutes (benchmarks): each line runs with
  ``--help`` from the repository root, so a script that is gone or renamed fails here.
- ``<!-- doc-test: elsewhere tests/x.py::test_y (why) -->``: a block that needs what CI has not
  (a Docker daemon, root and systemd, a Jetson): the named test runs its closest real form, and
  this test checks that it exists.
- Blocks in ``text`` (program output, file layouts) are not code and are not run.

Ports in the text (``8080``, ``8090``, gRPC ``8001``, MQTT ``1883``) are replaced with free ones, and a real
mosquitto is started for pages that name a broker. ``pip install`` lines are checked against
pyproject's extras instead of being run (``scripts/check-installs.py`` resolves those for real).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.broker import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[1]
# In a reader's order: later pages use what earlier ones made (build/rpi4 from convert.md).
PAGES = ["README.md", *(f"docs/{name}.md" for name in (
    "convert", "bundle", "compress", "serve", "drift", "measure-on", "mqtt", "fleet", "fleet-scale", "dashboards",
    "security", "deploy",
    "benchmarks", "development", "architecture", "telemetry"))]
BLOCK = re.compile(r"(?:<!-- doc-test: (?P<directive>.*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)\n```", re.S)
RUN = ("bash", "python")
NOT_CODE = ("text", "")
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])

pytestmark = pytest.mark.slow  # real conversions, servers and a broker, page by page


@dataclass
class Block:
    page: str
    line: int
    lang: str
    body: str
    directive: str

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text()
    return [Block(page, text[:m.start()].count("\n") + 1, m.group("lang"), m.group("body"),
                  (m.group("directive") or "").strip()) for m in BLOCK.finditer(text)]


def test_every_page_is_tested_and_every_block_says_how():
    on_disk = {"README.md", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))}
    assert set(PAGES) == on_disk, f"pages no test runs: {sorted(on_disk - set(PAGES))}"
    for page in PAGES:
        for block in blocks(page):
            if block.lang in NOT_CODE:
                continue
            kind = block.directive.split(" ")[0]
            assert block.lang in RUN or kind in ("file", "elsewhere", "config"), \
                f"{block.where()}: a {block.lang} block needs <!-- doc-test: file NAME --> or config"
            if kind == "elsewhere":
                target = re.match(r"elsewhere (\S+)::(\w+)", block.directive)
                assert target, f"{block.where()}: elsewhere takes tests/file.py::test_name"
                source = (ROOT / target.group(1)).read_text()
                assert f"def {target.group(2)}(" in source, f"{block.where()}: {target.group(0)} does not exist"


def test_ci_runs_exactly_the_readmes_test_command():
    """The README's second command is what .ci/run executes, and no collected test is a failure."""
    readme = next(b for b in blocks("README.md") if "./scripts/test.sh" in b.body)
    command = next(line.split("#")[0].strip() for line in readme.body.splitlines() if "test.sh" in line)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"exec {command}" in ci.splitlines()
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert script.count("-eq 5") >= 2 and "collected no tests" in script


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits):
    """What the pages assume the reader has: a model, sample files and a factory with weights."""
    from edgec.sdk.examples.zoo import digits_cnn, export_pt2, seeded, train

    root = tmp_path_factory.mktemp("docs")
    model = train(seeded(digits_cnn), digits.x_train, digits.y_train, epochs=3)
    export_pt2(model, digits.x_train, root / "model.pt2")
    import numpy as np

    np.savez(root / "calib.npz", input=digits.x_calib, labels=digits.y_calib)
    np.savez(root / "train.npz", input=digits.x_train[:400], labels=digits.y_train[:400])  # a small run
    np.savez(root / "test.npz", input=digits.x_test, labels=digits.y_test)
    np.save(root / "sample.npy", digits.x_test[:4])
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "nets.py").write_text("from edgec.sdk.examples.zoo import digits_cnn as cnn  # noqa: F401\n")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "cnn.safetensors"))
    shutil.copytree(ROOT / "deploy", root / "deploy")  # a checkout's files, copied: the pages write into them
    return root


def _env(root: Path) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "120"}


def _ports(text: str, ports: dict[str, str]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"(?<![\d.]){old}(?!\d)", new, text)
    return text


def _check_pip(block: Block) -> str:
    """``pip install 'edgec[x]'`` lines: the extras must exist; other pip lines are the reader's own."""
    kept = []
    for line in block.body.splitlines():
        if re.match(r"\s*pip install", line):
            for extras in re.findall(r"edgec\[([a-z0-9,-]+)\]", line):
                unknown = set(extras.split(",")) - EXTRAS
                assert not unknown, f"{block.where()}: no extra {unknown} in pyproject.toml"
            continue
        kept.append(line)
    return "\n".join(kept)


def _run(block: Block, body: str, root: Path, *, retry_s: float = 0, context: str = "") -> None:
    command = (["bash", "-euo", "pipefail", "-c", body] if block.lang == "bash" else [sys.executable, "-c", body])
    deadline = time.monotonic() + retry_s
    while True:
        done = subprocess.run(command, cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0, (f"{block.where()} failed ({done.returncode}):\n{body}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}\n--- servers\n{context}")


@pytest.mark.parametrize("page", PAGES)
def test_page(page, workspace, tmp_path):
    found = [b for b in blocks(page) if b.lang not in NOT_CODE and not b.directive.startswith("elsewhere")]
    if not found:
        pytest.skip(f"{page} has no code to run")
    text = "\n".join(b.body for b in found)
    ports = {"8080": str(free_port()), "8090": str(free_port()), "8001": str(free_port())}
    broker = None
    if re.search(r"mqtts?://|\b1883\b|mosquitto_", text):
        broker = Mosquitto(tmp_path / "broker").start()
        ports["1883"] = str(broker.port)
    background: list[subprocess.Popen] = []
    try:
        for block in found:
            body = _ports(_check_pip(block), ports)
            kind, _, arg = block.directive.partition(" ")
            if kind == "file":
                (workspace / arg).parent.mkdir(parents=True, exist_ok=True)
                (workspace / arg).write_text(body + "\n")
                if arg.endswith("runtime.toml"):
                    from edgec.runtime.config import ServeConfig

                    ServeConfig.from_toml(workspace / arg)
            elif kind == "config":
                from edgec.runtime.config import ServeConfig

                (tmp_path / "runtime.toml").write_text(body + "\n")
                ServeConfig.from_toml(tmp_path / "runtime.toml")
            elif kind == "background":
                log = open(tmp_path / f"background-{len(background)}.log", "w")
                background.append(subprocess.Popen(["bash", "-c", f"exec {body.strip()}"], cwd=workspace,
                                                   env=_env(workspace), stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
            elif kind == "help":  # long-running scripts run by hand: each must exist and take its options
                for line in body.splitlines():
                    command = line.split("#")[0].strip()
                    if command:
                        _run(block, f"{command} --help", ROOT)
            elif body.strip():
                logs = "".join(f.read_text()[-2000:] for f in sorted(tmp_path.glob("background-*.log")))
                _run(block, body, workspace, retry_s=60 if kind == "after-background" else 0, context=logs)
    finally:
        for process in background:
            with_group = process.pid
            try:
                os.killpg(with_group, signal.SIGTERM)
                process.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(with_group, signal.SIGKILL)
        if broker is not None:
            broker.stop()
