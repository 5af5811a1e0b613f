"""Boards for tests and benchmarks: each its own folder, ``runtime.toml`` and ``edgec serve`` process, on a
real broker; and bundles made to be pushed to them (padded to a size, or with answers no board reproduces)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .broker import Mosquitto, free_port


class Board:
    """One board: its own folder, runtime.toml and `edgec serve` process."""

    def __init__(self, root: Path, name: str, broker: Mosquitto | None, initial: Path, *, groups=("lab",), trusted=None,
                 watch_s: float = 0.5, top: str = "", telemetry: str = "", fleet: str = "test",
                 fleet_table: str = "", env: dict[str, str] | None = None) -> None:
        self.name, self.root, self.port = name, root / name, free_port()
        self.root.mkdir(parents=True)
        shutil.copytree(initial, self.root / "initial")
        keys = f'trusted_keys = ["{trusted}"]\n' if trusted else ""
        fleet_tables = "" if broker is None else (  # (no broker: a board that only serves)
            f'[telemetry]\nbroker = "127.0.0.1"\nport = {broker.port}\nfleet = "{fleet}"\ndevice = "{name}"\n'
            f'interval_s = 1\nreconnect_max_s = 1\nspool = "spool.sqlite"\n{telemetry}'
            f'[fleet]\ngroups = {json.dumps(list(groups))}\nstore = "store"\nwatch_requests = 20\nwatch_s = {watch_s}\n'
            + ("" if trusted else "allow_unsigned = true\n") + fleet_table)
        (self.root / "runtime.toml").write_text(
            f'port = {self.port}\n{keys}{top}[[models]]\nname = "digits"\npath = "initial"\n{fleet_tables}')
        self.process: subprocess.Popen | None = None
        self.env = {**os.environ, **env} if env else None

    def start(self) -> Board:
        self.process = subprocess.Popen([sys.executable, "-m", "edgec", "serve", "--config",
                                         str(self.root / "runtime.toml")], stdout=subprocess.DEVNULL, env=self.env,
                                        stderr=open(self.root / "serve.log", "ab"))
        until = time.monotonic() + 60
        while time.monotonic() < until:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"board {self.name} did not start: {(self.root / 'serve.log').read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str:
        with urllib.request.urlopen(f"{self.url}/v1/models", timeout=5) as resp:
            return next(m for m in json.loads(resp.read())["models"] if m["name"] == "digits")["version"]

    def predict(self, x) -> int:
        req = urllib.request.Request(f"{self.url}/v1/models/digits/predict", data=json.dumps({"inputs": x.tolist()}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)


def resum(bundle: Path, name: str) -> None:
    """Re-compute one file's sha256 in a bundle's manifest after the file was edited (the integrity check passes)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def padded(src: Path, dest: Path, mb: float) -> Path:
    bundle = shutil.copytree(src, dest)
    (bundle / "padding.bin").write_bytes(np.random.default_rng(0).bytes(int(mb * 2**20)))
    resum(bundle, "padding.bin")
    return bundle


def drifted(src: Path, dest: Path) -> Path:
    """A bundle whose recorded host answers no board reproduces (a parity failure)."""
    bundle = shutil.copytree(src, dest)
    with np.load(bundle / "golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files}
    golden["output_0"] = golden["output_0"] * 1.5 + 1.0
    np.savez(bundle / "golden.npz", **golden)
    resum(bundle, "golden.npz")
    return bundle
