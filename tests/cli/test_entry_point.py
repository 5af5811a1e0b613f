"""The installed ``edgec`` script, as a user runs it: the assembled command tree, and the fleet-key commands
and the runtime commands on a real bundle (each one line and exit 1 when it fails)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

EDGEC = Path(sys.executable).parent / "edgec"
ROOT = Path(__file__).resolve().parents[2]


def edgec(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGEC), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})


def test_the_installed_command_lists_its_commands_and_runs_keys_sign_verify_run(tmp_path):
    listed = re.findall(r"^│ ([a-z]+) ", edgec("--help", cwd=tmp_path).stdout, flags=re.M)
    assert listed == ["quickstart", "convert", "analyze", "compress", "qat", "run", "verify", "serve", "devices", "doctor", "keys",
                      "sign", "fleet", "dashboard", "telemetry", "deploy"], listed
    assert edgec("keys", "new", "--out", "fleet-key", cwd=tmp_path).returncode == 0
    bundle = shutil.copytree(ROOT / "tests" / "fixtures" / "bundles" / "onnx-int8", tmp_path / "b")
    signed = edgec("sign", bundle, "--key", "fleet-key", cwd=tmp_path)
    assert signed.returncode == 0 and "release" in signed.stdout, signed.stderr
    checked = edgec("verify", bundle, "--key", "fleet-key.pub", cwd=tmp_path)
    assert checked.returncode == 0 and "✓ signature" in checked.stdout, checked.stdout + checked.stderr
    with np.load(ROOT / "tests" / "fixtures" / "digits-test.npz") as data:
        np.savez(tmp_path / "in.npz", x=data["x"][:3])
    ran = edgec("run", bundle, "--input", "in.npz", cwd=tmp_path)
    assert ran.returncode == 0 and "3 samples" in ran.stdout, ran.stderr
    for args in (("fleet", "status", "--broker", "mqtt://127.0.0.1:1"), ("dashboard", "--broker", "mqtt://127.0.0.1:1",
                 "--host", "0.0.0.0"), ("devices", "show", "rpi9")):
        failed = edgec(*args, cwd=tmp_path)
        assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, (args, failed.stderr)
