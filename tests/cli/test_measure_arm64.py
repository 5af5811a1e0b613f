"""`edgec convert --measure-on` against `edgec serve` in the Debian arm64 root of scripts/arm64-check.sh (qemu-user,
Cortex-A72): the board names itself aarch64 with the emulated core, and every candidate within budget is checked on
its golden samples and timed there. Emulated timings say nothing of a real Pi: the plumbing is checked, not numbers.

Building the root takes 10-20 minutes (debootstrap, once, cached); this test uses it where it is built and says why
it skipped where not (CI does not build it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARM64 = Path(os.environ.get("EDGEC_ARM64_ROOT") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "edgec" / "arm64-bookworm")


@pytest.mark.slow
def test_measure_on_a_board_in_the_arm64_root():
    if os.geteuid() != 0:
        pytest.skip("the arm64 root needs root (chroot, bind mounts)")
    if not (ARM64 / ".edgec-ready").is_file():
        pytest.skip(f"no arm64 root at {ARM64}: build it once with sudo ./scripts/arm64-check.sh (10-20 min)")
    done = subprocess.run([str(ROOT / "scripts" / "arm64-check.sh")], capture_output=True, text=True, timeout=3000,
                          env={**os.environ, "EDGEC_ARM64_STEPS": "measure", "EDGEC_ARM64_CPUS": "cortex-a72"})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "Measured on ARM Cortex-A72, aarch64" in done.stdout
    assert "golden sample(s) give the host's answers" in done.stdout and "shipped" in done.stdout
