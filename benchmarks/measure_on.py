"""What ``edgec convert --measure-on`` costs in wall time, and what it changes: the digits CNN (the committed
fp32 ONNX fixture) converted for x86-64 (ONNX) and rpi4 (TFLite), each without a board and with a real
``edgec serve`` board on loopback (``[measure] enabled = true``), in alternating rounds.

Run by hand: ``.venv/bin/python benchmarks/measure_on.py`` (``--rounds``, ``--devices``). Calibration and
held-out data are the 450 test digits of tests/fixtures. The table gives per device and mode the median
wall time of the whole ``edgec convert`` (a fresh process each), the seconds spent on the board (uploads
included), how many artifacts the board timed, what shipped, and its speed-up against fp32 as the host
and as the board measured it. Here the board is this host, so the two should roughly agree; on a real
board they need not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EDGEC = Path(sys.executable).parent / "edgec"
TOKEN = "benchmark-admin-token-0123456789"


def start_board(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shutil.copytree(FIXTURES / "bundles" / "onnx-fp32", folder / "served")
    (folder / "runtime.toml").write_text(f'port = {port}\nadmin_token = "{TOKEN}"\n[measure]\nenabled = true\n'
                                         '[[models]]\nname = "digits"\npath = "served"\n')
    board = subprocess.Popen([str(EDGEC), "serve", "--config", str(folder / "runtime.toml")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return board, url
        except OSError:
            time.sleep(0.1)
    board.kill()
    raise SystemExit("the board did not start")


def convert(device: str, calib: Path, out: Path, board: str | None) -> tuple[float, dict]:
    command = [str(EDGEC), "convert", str(FIXTURES / "bundles" / "onnx-fp32" / "model.onnx"), "--device", device,
               "--calib", str(calib), "--out", str(out), "--force", "--json"]
    if board:
        command += ["--measure-on", board, "--token", TOKEN]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"edgec convert failed: {done.stderr[-2000:]}")
    return wall, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per device")
    parser.add_argument("--devices", default="x86-64,rpi4", help="device profiles, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgec-measure-bench-") as tmp:
        work = Path(tmp)
        with np.load(FIXTURES / "digits-test.npz") as npz:
            np.savez(work / "calib.npz", input=npz["x"], labels=npz["labels"])
        board, url = start_board(work / "board")
        try:
            print("| device | mode | convert wall (median) | on the board | artifacts timed there | shipped "
                  "| speed-up vs fp32, host | on the board |")
            print("|---|---|---|---|---|---|---|---|")
            for device in args.devices.split(","):
                runs: dict[str, list] = {"host only": [], "--measure-on": []}
                for _ in range(args.rounds):
                    for mode, target in (("host only", None), ("--measure-on", url)):
                        runs[mode].append(convert(device, work / "calib.npz", work / "out", target))
                for mode, results in runs.items():
                    walls = [wall for wall, _ in results]
                    report = results[-1][1]
                    board_part = report.get("board")
                    timed = sum(1 for c in (report.get("search") or {}).get("candidates", []) if c.get("board"))
                    shipped = [r["search"]["shipped"] if r.get("search") else r["target"]["precision"]
                               for _, r in results]
                    print(f"| {device} | {mode} | {statistics.median(walls):.1f} s "
                          f"({min(walls):.1f}-{max(walls):.1f}) | "
                          f"{board_part['seconds']:.1f} s | {timed} |" if board_part else
                          f"| {device} | {mode} | {statistics.median(walls):.1f} s "
                          f"({min(walls):.1f}-{max(walls):.1f}) | – | – |", end="")
                    print(f" {', '.join(sorted(set(shipped)))} | {report['summary']['speedup_vs_fp32']:.2f}x | "
                          + (f"{board_part['speedup_vs_fp32']:.2f}x |" if board_part else "– |"))
        finally:
            board.terminate()
            board.wait(30)


if __name__ == "__main__":
    main()
