"""``edgec deploy install``: the systemd unit, checked by systemd's own verifier."""

from __future__ import annotations

import subprocess
import sys

from edgec.runtime.install import PROCESS_MB, build_unit

EDGEC = [sys.executable, "-m", "edgec"]


def _config(tmp_path, fixture_bundle, extra: str = "") -> str:
    path = tmp_path / "runtime.toml"
    path.write_text(f'port = 8080\n[[models]]\nname = "digits"\npath = "{fixture_bundle("tflite", "int8")}"\n{extra}')
    return str(path)


def _verify(system_tool, unit) -> str:
    done = subprocess.run([system_tool("systemd-analyze", "systemd"), "verify", str(unit)], capture_output=True,
                          text=True)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f" (exit {done.returncode})")


def test_the_unit_passes_systemd_analyze_verify(tmp_path, fixture_bundle, system_tool):
    config = _config(tmp_path, fixture_bundle, '[telemetry]\nbroker = "localhost"\nspool = "/var/lib/edgec/spool.sqlite"\n')
    done = subprocess.run([*EDGEC, "deploy", "install", "--config", config, "--unit-dir", str(tmp_path / "units")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "units" / "edgec.service"
    assert "systemctl enable --now edgec.service" in done.stdout
    assert _verify(system_tool, unit) == ""
    text = unit.read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=edgec", "Restart=on-failure",
                 "NoNewPrivileges=yes", "PrivateDevices=yes", f"MemoryMax={1024 + PROCESS_MB}M",  # rpi4: 1024 MB
                 f"ExecStart={sys.executable} -m edgec serve --config {config}"):
        assert line + "\n" in text, line
    assert "ReadWritePaths" not in text and "CAP_NET_BIND_SERVICE" not in text
    # The verifier is live: the same unit with a mistyped key and value is reported.
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=stricter").replace("Type=exec", "Typo=exec"))
    complaints = _verify(system_tool, broken)
    assert "Typo" in complaints and "stricter" in complaints


def test_dry_run_shows_the_unit_and_writes_nothing(tmp_path, fixture_bundle):
    config = _config(tmp_path, fixture_bundle)
    done = subprocess.run([*EDGEC, "deploy", "install", "--config", config, "--unit-dir", str(tmp_path / "units"),
                           "--dry-run", "--user", "pi", "--memory-mb", "700"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "[Service]" in done.stdout and "User=pi\n" in done.stdout and "MemoryMax=700M" in done.stdout
    assert "DynamicUser" not in done.stdout
    assert not (tmp_path / "units").exists()


def test_what_the_service_could_not_do_is_said(tmp_path, fixture_bundle):
    config = _config(tmp_path, fixture_bundle, '[telemetry]\nbroker = "localhost"\nspool = "spool.sqlite"\n')
    unit = build_unit(config, unit_dir=tmp_path)
    assert any(str(tmp_path) in w and "/var/lib/edgec" in w for w in unit.warnings)
    assert f"ReadWritePaths=-{tmp_path}\n" in unit.text
    web = tmp_path / "web.toml"
    web.write_text(open(config).read().replace("port = 8080", "port = 80"))
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in build_unit(web, unit_dir=tmp_path).text


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, fixture_bundle):
    units = tmp_path / "units"
    missing = subprocess.run([*EDGEC, "deploy", "install", "--config", str(tmp_path / "nope.toml"),
                              "--unit-dir", str(units)], capture_output=True, text=True)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    config = tmp_path / "runtime.toml"
    config.write_text('[[models]]\nname = "digits"\npath = "no-such-bundle"\n')
    bad = subprocess.run([*EDGEC, "deploy", "install", "--config", str(config), "--unit-dir", str(units)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "model digits" in bad.stderr and "Traceback" not in bad.stderr
    assert not units.exists()
    good = _config(tmp_path, fixture_bundle)
    assert subprocess.run([*EDGEC, "deploy", "install", "--config", good, "--unit-dir", str(units)]).returncode == 0
    again = subprocess.run([*EDGEC, "deploy", "install", "--config", good, "--unit-dir", str(units)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr
