#!/usr/bin/env python3
"""Do edgec's published requirements resolve, quickly, without a constraints file?

    python scripts/check-installs.py                 # every install the README names
    python scripts/check-installs.py --limit 60 --only "runtime"

Builds a wheel of this checkout, then asks pip to resolve each install against PyPI
(``pip install --dry-run``: nothing installed) with a real Python 3.10 (JetPack 6, Ubuntu
22.04) and 3.11 interpreter each (in a throwaway venv: pip evaluates the environment markers
of every package against the interpreter it runs on, so ``--python-version`` alone would
answer for the wrong Python), with and without ``constraints.txt``; the board extras also
as an aarch64 board with glibc 2.28 sees them (``--platform``; platform markers are still
this host's, scripts/arm64-check.sh installs on a real arm64 root). pip's own configuration
is ignored, as on a fresh machine. Prints one row per install (seconds, packages, the
versions that matter) and exits 1 if any fails to resolve or takes longer than ``--limit``
seconds. Pythons not installed here are reported, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# glibc 2.17 .. 2.28: what a 64-bit Raspberry Pi OS (buster and newer) or JetPack accepts.
AARCH64 = ["manylinux2014_aarch64", *(f"manylinux_2_{n}_aarch64" for n in range(17, 29))]
PYTHONS = ("3.10", "3.11")
CHECKS = [  # (extras, python, platforms, constrained)
    *((extras, py, None, False) for extras in ("runtime", "sdk", "tf", "all", "all,dev") for py in PYTHONS),
    *(("all,dev,tf", py, None, True) for py in PYTHONS),  # what scripts/bootstrap.sh installs
    *((extras, py, AARCH64, False) for extras in ("runtime", "jetson", "runtime,grpc") for py in PYTHONS),
]
SHOWN = ("torch", "numpy", "onnxruntime", "ai-edge-litert", "litert-torch", "tensorflow-cpu")


def interpreter(version: str, venvs: Path) -> Path | None:
    """A venv of Python ``version`` with a current pip, or None when that Python is not installed."""
    candidates = [shutil.which(f"python{version}"),  # then pyenv's builds, whose shims may not be enabled
                  *sorted(map(str, Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")))]
    found = next((c for c in candidates if c and subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0),
                 None)
    if found is None:
        return None
    venv = venvs / version
    if not (venv / "bin" / "python").exists():
        subprocess.run([found, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--isolated",
                        "--disable-pip-version-check", "--upgrade", "pip"], check=True, capture_output=True,
                       env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return venv / "bin" / "python"


def resolve(wheel: Path, python: Path | None, extras: str, version: str, platforms: list[str] | None,
            constrained: bool, limit: float) -> dict:
    if python is None:
        return {"ok": False, "seconds": 0.0, "why": f"python{version} is not installed here: cannot check"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [str(python), "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                   "--disable-pip-version-check", "--progress-bar=off", "--only-binary=:all:",
                   "--report", str(report), f"edgec[{extras}] @ {wheel.as_uri()}"]
        if constrained:
            command += ["-c", str(ROOT / "constraints.txt"), "torch==2.13.0"]
        if platforms:
            command += ["--python-version", version, *(f"--platform={p}" for p in platforms)]
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=max(limit * 3, 120), env=env)
        except subprocess.TimeoutExpired:
            return {"ok": False, "seconds": time.monotonic() - started, "why": "pip was still resolving; stopped"}
        seconds = time.monotonic() - started
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            return {"ok": False, "seconds": seconds, "why": " / ".join(lines[-3:])[:300]}
        installs = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}
    # Where the time went: pip says when it backtracks; the rest is fetching wheels and metadata.
    backtracked = sorted({line.split("versions of ")[1].split(" to ")[0] for line in done.stdout.splitlines()
                          if "looking at multiple versions of" in line})
    fetched = sum(line.strip().startswith("Downloading") for line in done.stdout.splitlines())
    why = "" if seconds <= limit else f"slower than {limit:g} s"
    why += f"{'; ' if why else ''}backtracked over {', '.join(backtracked)}" if backtracked else ""
    return {"ok": seconds <= limit, "seconds": seconds, "packages": len(versions), "fetched": fetched, "why": why,
            "versions": {k: versions[k] for k in SHOWN if k in versions}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=60.0, help="seconds one resolution may take")
    parser.add_argument("--only", help="comma-less extras spec to check alone, e.g. runtime or all,dev")
    parser.add_argument("--jobs", type=int, default=1, help="resolutions run side by side (times then include "
                        "waiting for each other)")
    args = parser.parse_args()
    checks = [c for c in CHECKS if args.only is None or c[0] == args.only]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                        "-w", tmp, str(ROOT)], check=True, capture_output=True)
        wheel = next(Path(tmp).glob("edgec-*.whl"))
        pythons = {v: interpreter(v, Path(tmp) / "venvs") for v in {c[1] for c in checks}}
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: resolve(wheel, pythons[c[1]], *c, args.limit), checks))
    print(f"{'install':<34} {'python':<7} {'platform':<17} {'seconds':>7} {'pkgs':>5} {'fetched':>7}  result")
    for (extras, python, platforms, constrained), r in zip(checks, results):
        where = "aarch64 glibc2.28" if platforms else "this host"
        what = f"edgec[{extras}]" + (" -c constraints.txt" if constrained else "")
        shown = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
        verdict = ("ok" if r["ok"] else "FAIL") + (f": {r['why']}" if r["why"] else "") + (f"  ({shown})" if shown else "")
        print(f"{what:<34} {python:<7} {where:<17} {r['seconds']:>7.1f} {r.get('packages', 0):>5} "
              f"{r.get('fetched', 0):>7}  {verdict}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
