"""What a board or container user installs: the compose file, the Dockerfile, missing extras."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
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
    for name, service in services.items():  # every file mounted from the repository exists (or secrets.sh makes it)
        for source in [v.split(":")[0] for v in service.get("volumes", [])] + service.get("env_file", []):
            if source.startswith(".") and not source.startswith("./compose/secrets/"):
                assert (DEPLOY / source).exists() or source == "../build", f"{name} mounts missing {source}"
    assert services["mosquitto"]["volumes"][0].startswith("./compose/mosquitto.conf")
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
def test_quickstart_through_the_installed_entry_point_and_its_next_steps(tmp_path):
    import shlex
    import socket
    import time

    edgec = Path(sys.executable).parent / "edgec"
    env = {**os.environ, "PATH": f"{edgec.parent}:{os.environ['PATH']}", "COLUMNS": "120"}
    done = subprocess.run([str(edgec), "quickstart", "--workdir", "qs"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "qs" / "summary.json").read_text())
    rows = {(row["device"], row["precision"]): row for row in summary["rows"]}
    assert set(rows) == {("rpi4", "fp32"), ("rpi4", "int8"), ("x86-64", "fp32"), ("x86-64", "int8")}
    assert summary["test_samples"] >= 400 and summary["torch_test_accuracy"] > 0.95
    for row in rows.values():  # every bundle measured on the held-out digits, and int8 a quarter of the size
        assert row["accuracy"] > 0.95 and (tmp_path / "qs" / "bundles" / Path(row["bundle"]).name).is_dir()
    assert rows["rpi4", "int8"]["size_bytes"] < 0.35 * rows["rpi4", "fp32"]["size_bytes"]
    # It ends with the next three commands, on its own paths; they work as printed (serve on a free port).
    printed = done.stdout[done.stdout.index("Next"):].splitlines()[1:4]
    assert [line.strip() for line in printed] == summary["next"], done.stdout
    report, serve, call = (shlex.split(line) for line in summary["next"])
    assert "edgec report" in subprocess.run(report, capture_output=True, text=True, cwd=tmp_path).stdout
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*serve, "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        call = [port_arg.replace("localhost:8080", f"127.0.0.1:{port}") for port_arg in call]
        deadline, answer = time.time() + 60, None
        while time.time() < deadline and server.poll() is None:
            answered = subprocess.run(call, capture_output=True, text=True, cwd=tmp_path)
            if answered.returncode == 0 and answered.stdout:
                answer = json.loads(answered.stdout)
                break
            time.sleep(0.3)
        assert answer is not None, server.stdout.read() if server.poll() is not None else "no answer"
        scores = answer["outputs"][0]["data"]
        assert answer["model_name"] == "digits" and len(scores) == 10
    finally:
        server.terminate()
        server.wait(timeout=30)
    again = subprocess.run([str(edgec), "quickstart", "--workdir", "qs"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr + again.stdout


def test_the_compose_broker_takes_no_anonymous_client_and_its_board_and_dashboard_work(tmp_path, system_tool):
    """compose's broker files and secrets.sh on a real mosquitto: the board of compose/runtime.toml
    publishes with its secret, the dashboard reads with dashboard.env, an anonymous client is refused."""
    import os
    import shutil
    import tomllib
    import urllib.request

    import yaml
    from helpers.boards import Board  # noqa: E402
    from helpers.broker import Mosquitto, free_port  # noqa: E402

    system_tool("mosquitto", "mosquitto")
    secrets = tmp_path / "secrets"
    made = subprocess.run([str(DEPLOY / "compose" / "secrets.sh"), str(secrets)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    mounts = {}  # container path -> the file here, as compose would mount it
    for source, target, *_ in (v.split(":") for s in compose.values() for v in s.get("volumes", [])):
        if source.startswith("./compose/secrets/"):
            mounts[target] = secrets / Path(source).name
        elif source.startswith("./") and (DEPLOY / source).is_file():
            mounts[target] = DEPLOY / source
    assert all(path.exists() for path in mounts.values()), mounts
    root = tmp_path / "broker"
    (root / "data").mkdir(parents=True)
    port = free_port()
    conf = mounts["/mosquitto/config/mosquitto.conf"].read_text()
    for target in ("/mosquitto/config/passwd", "/mosquitto/config/acl"):
        conf = conf.replace(target, str(mounts[target]))
    conf = conf.replace("/mosquitto/data/", f"{root}/data/").replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    broker = Mosquitto(root, port, conf=conf).start()
    telemetry = tomllib.loads(mounts["/etc/edgec/runtime.toml"].read_text())["telemetry"]
    assert telemetry["password_file"] == "/run/secrets/mqtt-password" and telemetry["username"] == telemetry["device"]
    board = Board(tmp_path, telemetry["device"], broker, ROOT / "tests" / "fixtures" / "bundles" / "onnx-int8",
                  fleet=telemetry["fleet"], telemetry=f'username = "{telemetry["username"]}"\n'
                  f'password_file = "{mounts["/run/secrets/mqtt-password"]}"\n')
    env = dict(line.split("=", 1) for line in (secrets / "dashboard.env").read_text().split())
    command = compose["dashboard"]["command"]
    dashboard = subprocess.Popen([sys.executable, "-m", "edgec", *command[1:command.index("--host")],
                                  "--broker", f"mqtt://127.0.0.1:{port}", "--host", "0.0.0.0", "--port", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        board.start()
        line = dashboard.stdout.readline()
        assert "?token=" in line, line + dashboard.stderr.read() if dashboard.poll() is not None else line
        page = re.search(r":(\d+)/", line).group(1)
        request = urllib.request.Request(f"http://127.0.0.1:{page}/api/fleet",
                                         headers={"Authorization": f"Bearer {env['EDGEC_DASHBOARD_TOKEN']}"})
        until, boards = time.monotonic() + 30, []
        while time.monotonic() < until and not any(b.get("telemetry_at") or b.get("uptime_s") for b in boards):
            with urllib.request.urlopen(request, timeout=5) as resp:
                boards = json.loads(resp.read())["boards"]
            time.sleep(0.3)
        assert [b["id"] for b in boards] == [f'{telemetry["fleet"]}/{telemetry["device"]}'], boards
        anonymous = subprocess.run([sys.executable, "-m", "edgec", "fleet", "status", "--broker",
                                    f"mqtt://127.0.0.1:{port}", "--fleet", telemetry["fleet"]],
                                   capture_output=True, text=True, timeout=60)
        assert anonymous.returncode == 1 and "refused the connection" in anonymous.stderr, anonymous.stderr
    finally:
        board.stop()
        dashboard.terminate()
        dashboard.wait(10)
        broker.stop()
        shutil.rmtree(secrets)
