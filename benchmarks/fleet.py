"""A bundle rolled out to a fleet of boards over a real mosquitto on loopback: the numbers that matter.

Run by hand: ``.venv/bin/python benchmarks/fleet.py [--boards 20] [--mb 10] [--unsigned]``. Each
board is its own ``edgec serve`` process with a ``[fleet]`` table (the committed ONNX digits
bundle to start with); the bundle pushed is the int8 one padded with a file of random bytes to
the size asked (so it is as big as a real model's bundle while its model stays quick to load).
By default it runs as a secured fleet does: every bundle signed, the desired states signed with
the same key (edgec.runtime.agent.control), and boards with ``trusted_keys`` that check both.
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
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.boards import Board, drifted, padded  # noqa: E402
from helpers.broker import Mosquitto  # noqa: E402

BUNDLES = ROOT / "tests" / "fixtures" / "bundles"


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
