"""A bundle rolled out to a fleet of boards over a real mosquitto on loopback: the numbers that matter.

Run by hand: ``.venv/bin/python benchmarks/fleet.py [--boards 20] [--mb 10] [--unsigned]``. Each
board is its own ``edgec serve`` process with a ``[fleet]`` table (the committed ONNX digits
bundle to start with); the bundle pushed is the int8 one padded with a file of random bytes to
the size asked (so it is as big as a real model's bundle while its model stays quick to load).
By default it runs as a secured fleet does: every bundle signed, the desired states signed with
the same key (edgec.runtime.control), and boards with ``trusted_keys`` that check both.
A client sends requests to every board throughout. Measured:

- time from ``edgec fleet push`` until every board is live (chunks published, downloaded,
  checked, switched, watched);
- chunk bytes each board took off the network against the bundle's size on disk, and the
  estimated bytes on the wire (each chunk's MQTT header and topic added);
- peak RSS a board's serving process added during the download and switch (psutil);
- requests that failed on any board during the rollout (goal 0);
- time from publishing a canary whose golden parity check fails until the rollout has
  halted and the canary serves its old version again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
from mosquitto_broker import Mosquitto, free_port  # noqa: E402

BUNDLES = ROOT / "tests" / "fixtures" / "bundles"


class Board:
    """One board: its own folder, runtime.toml and `edgec serve` process."""

    def __init__(self, root: Path, name: str, broker: Mosquitto, initial: Path, *, groups=("lab",), trusted=None,
                 watch_s: float = 0.5, top: str = "", telemetry: str = "", fleet: str = "test") -> None:
        self.name, self.root, self.port = name, root / name, free_port()
        self.root.mkdir(parents=True)
        shutil.copytree(initial, self.root / "initial")
        keys = f'trusted_keys = ["{trusted}"]\n' if trusted else ""
        (self.root / "runtime.toml").write_text(
            f'port = {self.port}\n{keys}{top}'
            f'[[models]]\nname = "digits"\npath = "initial"\n'
            f'[telemetry]\nbroker = "127.0.0.1"\nport = {broker.port}\nfleet = "{fleet}"\ndevice = "{name}"\n'
            f'interval_s = 1\nreconnect_max_s = 1\nspool = "spool.sqlite"\n{telemetry}'
            f'[fleet]\ngroups = {json.dumps(list(groups))}\nstore = "store"\nwatch_requests = 20\nwatch_s = {watch_s}\n'
            + ("" if trusted else "allow_unsigned = true\n"))
        self.process: subprocess.Popen | None = None

    def start(self) -> Board:
        self.process = subprocess.Popen([sys.executable, "-m", "edgec", "serve", "--config",
                                         str(self.root / "runtime.toml")], stdout=subprocess.DEVNULL,
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


def _resum(bundle: Path, name: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def padded(src: Path, dest: Path, mb: float) -> Path:
    bundle = shutil.copytree(src, dest)
    (bundle / "padding.bin").write_bytes(np.random.default_rng(0).bytes(int(mb * 2**20)))
    _resum(bundle, "padding.bin")
    return bundle


def drifted(src: Path, dest: Path) -> Path:
    """A bundle whose recorded host answers no board reproduces (a parity failure)."""
    bundle = shutil.copytree(src, dest)
    with np.load(bundle / "golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files}
    golden["output_0"] = golden["output_0"] * 1.5 + 1.0
    np.savez(bundle / "golden.npz", **golden)
    _resum(bundle, "golden.npz")
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=20)
    parser.add_argument("--mb", type=float, default=10.0, help="bundle size to push (MB)")
    parser.add_argument("--unsigned", action="store_true", help="no keys: unsigned bundles and control messages")
    args = parser.parse_args()
    import paho.mqtt.client as paho

    from edgec.sdk.bundle.sign import control_signer, new_keys, sign_bundle
    from edgec.sdk.fleet.link import FleetLink
    from edgec.sdk.fleet.rollout import push

    x = np.load(ROOT / "tests" / "fixtures" / "digits-test.npz")["x"][:1]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        boards: list[Board] = []
        try:
            started = time.monotonic()
            initial = shutil.copytree(BUNDLES / "onnx-fp32", work / "initial")
            bundle = padded(BUNDLES / "onnx-int8", work / "update", args.mb)
            # a version no board ran (anti-rollback would refuse one it replaced), made for rpi4: pushed --any-device
            bad = drifted(BUNDLES / "tflite-int8", work / "drifted")
            signer, public = None, None
            if not args.unsigned:
                private, public, _ = new_keys(work / "keys" / "fleet")
                for folder in (initial, bundle, bad):
                    sign_bundle(folder, private)
                signer = control_signer(private)
            for i in range(args.boards):
                boards.append(Board(work, f"pi-{i + 1:02d}", broker, initial, watch_s=2.0, trusted=public).start())
            print(f"{args.boards} boards up in {time.monotonic() - started:.1f} s", flush=True)
            size = sum(p.stat().st_size for p in bundle.iterdir())
            failures, served, stop = [], [0], threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    for board in boards:
                        code = board.predict(x)
                        served[0] += 1
                        if code != 200:
                            failures.append((board.name, code))

            peaks = {b.name: 0 for b in boards}
            procs = {b.name: psutil.Process(b.process.pid) for b in boards}
            base = {name: p.memory_info().rss for name, p in procs.items()}

            def sample() -> None:
                while not stop.is_set():
                    for name, proc in procs.items():
                        try:
                            peaks[name] = max(peaks[name], proc.memory_info().rss - base[name])
                        except psutil.Error:
                            pass
                    time.sleep(0.05)

            threads = [threading.Thread(target=traffic), threading.Thread(target=sample)]
            for t in threads:
                t.start()
            reports: list[dict] = []  # every update report (the link keeps only each board's latest)
            watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
            watcher.on_connect = lambda c, u, f, r, p: c.subscribe("edgec/test/+/update/digits", qos=1)
            watcher.on_message = lambda c, u, m: reports.append(json.loads(m.payload)) if m.payload else None
            watcher.connect("127.0.0.1", broker.port)
            watcher.loop_start()
            with FleetLink("127.0.0.1", broker.port, fleet="test", signer=signer) as link:
                link.wait_for(lambda: len(link.members) >= args.boards, 60)
                result = push(link, bundle, "digits", "group/lab", timeout_s=600)
                stop.set()
                for t in threads:
                    t.join()
                taken = {r["device"]: r["received_bytes"] for r in reports
                         if r.get("state") == "verifying" and r.get("rollout") == result.rollout}
                chunks = -(-result.blob_bytes // (256 * 1024))
                topic = len(f"edgec/test/blobs/{'0' * 64}/{chunks}") + 2 + 5  # topic, its length, fixed header
                began = time.monotonic()
                halted = push(link, bad, "digits", "group/lab", canary=1, timeout_s=120, any_device=True)
                rollback_s = time.monotonic() - began
                old = boards[0].version()
            live = sum(state == "live" for state in result.states.values())
            per_board = sorted(taken.values())
            wire = [(b + chunks * topic) / size for b in per_board]
            print("\n| measure | value | goal |")
            print("|---|---|---|")
            print(f"| control messages and bundles | {'unsigned' if args.unsigned else 'signed (ed25519), checked by boards with trusted_keys'} | signed |")
            print(f"| bundle size | {size / 2**20:.1f} MB ({chunks} chunks of 256 kB) | |")
            print(f"| boards live | {live}/{args.boards} | all |")
            print(f"| push until all live | {result.seconds:.1f} s | |")
            print(f"| chunk bytes per board / bundle size | {min(per_board) / size:.3f}x - {max(per_board) / size:.3f}x | "
                  "≤ 1.1x |")
            print(f"| est. wire bytes per board / bundle size | {max(wire):.3f}x | ≤ 1.1x |")
            print(f"| peak RSS added on a board (max over boards) | {max(peaks.values()) / 2**20:.1f} MB | under the "
                  "chunk window, not the bundle |")
            print(f"| peak RSS added on a board (median) | {sorted(peaks.values())[len(peaks) // 2] / 2**20:.1f} MB | |")
            print(f"| requests failed during the rollout | {len(failures)} of {served[0]} | 0 |")
            print(f"| failed canary: halted and rolled back | {rollback_s:.1f} s ({'halted' if halted.halted else 'NOT halted'}, "
                  f"canary {halted.states}, serving {old}) | |")
        finally:
            for board in boards:
                board.stop()
            broker.stop()


if __name__ == "__main__":
    main()
