"""What a board or container user installs: the compose file, the Dockerfile, missing extras."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _blocked(modules: list[str], code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` with ``modules`` made unimportable, as on a machine without them."""
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, cwd=tmp_path)


def test_compose_file_follows_the_compose_spec_and_is_wired_together():
    checked = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                              str(DEPLOY / "compose.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"edgec", "mosquitto", "prometheus", "grafana", "dashboard"} <= set(services)
    for name, service in services.items():  # every file mounted from the repository exists
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists() or source == "../build", f"{name} mounts missing {source}"
    assert "edgec:8080" in (DEPLOY / "compose" / "prometheus.yml").read_text()
    runtime = (DEPLOY / "compose" / "runtime.toml").read_text()
    assert 'broker = "mosquitto"' in runtime and 'host = "0.0.0.0"' in runtime and "/var/lib/edgec/" in runtime
    assert any("grafana/edgec.json" in v for v in services["grafana"]["volumes"])
    assert services["edgec"]["build"]["dockerfile"] == "deploy/Dockerfile"


@pytest.mark.slow
def test_the_dockerfile_steps_build_and_its_healthcheck_works():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check-dockerfile.py")], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEALTHCHECK passes" in done.stdout and "the HEALTHCHECK then fails" in done.stdout


def test_a_missing_package_is_named_exactly(tmp_path):
    done = _blocked(["onnx"], "from edgec._optional import need\n"
                    "need('onnxruntime.quantization', extra='sdk', purpose='to quantize')\n"
                    "need('onnx.helper', extra='sdk', purpose='to read ONNX')", tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(r"\bonnx is not installed", last) and "onnxruntime" not in last.split("not installed")[0], last


def test_quickstart_without_the_sdk_leaves_no_workdir(tmp_path):
    done = _blocked(["torch"], "from edgec.cli import main\n"
                    "sys.argv = ['edgec', 'quickstart', '--workdir', 'qs']\nmain()", tmp_path)
    assert done.returncode == 1, done.stderr
    assert "torch" in done.stderr and "pip install" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "qs").exists()


@pytest.mark.slow
def test_quickstart_through_the_installed_entry_point(tmp_path):
    edgec = Path(sys.executable).parent / "edgec"
    done = subprocess.run([str(edgec), "quickstart", "--workdir", "qs", "--json"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    rows = {(row["device"], row["precision"]): row for row in summary["rows"]}
    assert set(rows) == {("rpi4", "fp32"), ("rpi4", "int8"), ("x86-64", "fp32"), ("x86-64", "int8")}
    assert summary["test_samples"] >= 400 and summary["torch_test_accuracy"] > 0.95
    for row in rows.values():  # every bundle measured on the held-out digits, and int8 a quarter of the size
        assert row["accuracy"] > 0.95 and (tmp_path / "qs" / "bundles" / Path(row["bundle"]).name).is_dir()
    assert rows["rpi4", "int8"]["size_bytes"] < 0.35 * rows["rpi4", "fp32"]["size_bytes"]
    again = subprocess.run([str(edgec), "quickstart", "--workdir", "qs"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr + again.stdout
