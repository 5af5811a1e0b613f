"""`edgec doctor` through the installed entry point: what this machine has, what a device needs, the broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.broker import Mosquitto, free_port

from edgec.runtime.doctor import cpu_flags
from edgec.runtime.system import host_arch

EDGEC = Path(sys.executable).parent / "edgec"


def doctor(*args, cwd=None):
    done = subprocess.run([str(EDGEC), "doctor", "--json", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else []), done.stderr


def by_what(checks):
    return {c["what"]: c for c in checks}


def test_doctor_says_what_this_machine_has():
    code, checks, err = doctor()
    assert code == 0, err
    found = by_what(checks)
    import onnxruntime

    assert found["Python"]["ok"] is True and sys.version.split()[0] in found["Python"]["detail"]
    assert found["onnxruntime"]["ok"] is True
    assert all(p in found["onnxruntime"]["detail"] for p in onnxruntime.get_available_providers())
    assert found["TFLite interpreter"]["ok"] is True and "ai-edge-litert" in found["TFLite interpreter"]["detail"]
    assert found["edgec[sdk]"]["ok"] is True and found["edgec[runtime]"]["ok"] is True  # what the set-up installs
    assert "GiB free" in found["memory"]["detail"] and "cores" in found["CPU"]["detail"]
    assert {"NVIDIA GPU", "Coral Edge TPU"} <= set(found) or any("NVIDIA" in w for w in found)
    table = subprocess.run([str(EDGEC), "doctor"], capture_output=True, text=True, timeout=120,
                           env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert table.returncode == 0 and "edgec doctor" in table.stdout and "onnxruntime" in table.stdout


def test_a_device_of_another_architecture_is_what_the_board_needs_not_a_failure():
    other = "rpi4" if host_arch() != "aarch64" else "x86-64"
    code, checks, _ = doctor("--device", "jetson-orin-nano" if other == "rpi4" else other)
    assert code == 0
    device = [c for c in checks if c["area"].startswith("device ")]
    assert device[0]["what"] == "architecture" and "convert here, then run these checks on the board" in \
        device[0]["detail"]
    if other == "rpi4":  # this x86 host: a Jetson's TensorRT is the board's to install, and how is said
        trt = by_what(device)["TensorrtExecutionProvider"]
        assert trt["ok"] is None and "the board needs it" in trt["detail"] and "onnxruntime-gpu" in trt["fix"]


def test_this_machines_own_device_checks_int8_instructions():
    code, checks, _ = doctor("--device", "x86-64" if host_arch() == "x86_64" else "rpi5")
    assert code == 0
    device = by_what([c for c in checks if c["area"].startswith("device ")])
    assert device["architecture"]["ok"] is True and device["onnxruntime"]["ok"] is True
    assert "int8" in device["int8 kernels"]["detail"]


def test_the_broker_is_checked_by_flag_and_from_runtime_toml(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        code, checks, _ = doctor("--broker", f"mqtt://127.0.0.1:{broker.port}")
        assert code == 0 and by_what(checks)[f"broker mqtt://127.0.0.1:{broker.port}"]["ok"] is True
        (tmp_path / "runtime.toml").write_text(f'[telemetry]\nbroker = "127.0.0.1"\nport = {broker.port}\n'
                                               f'spool = "{tmp_path / "spool.db"}"\n')
        code, checks, _ = doctor("--config", tmp_path / "runtime.toml")
        assert code == 0 and by_what(checks)[f"broker mqtt://127.0.0.1:{broker.port}"]["detail"] == "connected (MQTT 5)"
    finally:
        broker.stop()
    closed = free_port()
    code, checks, _ = doctor("--broker", f"mqtt://127.0.0.1:{closed}")
    refused = by_what(checks)[f"broker mqtt://127.0.0.1:{closed}"]
    assert code == 1 and refused["ok"] is False and "cannot connect" in refused["detail"]


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nflags\t\t: fpu vme sse2 avx2 avx512f avx512_vnni\n", {"avx2", "avx512_vnni"}),
    # A Raspberry Pi 5 (Cortex-A76) has the dot-product instructions; a Pi 4 (Cortex-A72) does not.
    ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
     "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n", {"asimddp", "asimdhp"}),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n", set()),
])
def test_cpu_flags_read_both_cpuinfo_layouts(cpuinfo, expected):
    flags = cpu_flags(cpuinfo)
    assert expected <= flags and not ({"asimddp", "avx512_vnni"} - expected) & flags
