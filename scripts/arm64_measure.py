"""``edgec convert --measure-on`` against a board in the arm64 root (scripts/arm64-check.sh runs it).

    python scripts/arm64_measure.py URL PARITY_DIR CPU

The board is ``edgec serve`` inside the root under qemu-user, ``[measure] enabled = true``; this host
converts the digits model that ``arm64_parity.py host`` trained (PARITY_DIR/model.pt2) for rpi4 with
``--measure-on URL`` and checks the plumbing: the board said it is aarch64 with the CPU qemu emulates,
fp32 and every candidate within budget were checked on their golden samples and timed there, and the
report says so. Timings under emulation say nothing about a real Pi: they are printed, not judged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TOKEN = "arm64-check-admin-token-0123456789"
CPUS = {"cortex-a72": "ARM Cortex-A72", "cortex-a76": "ARM Cortex-A76", "cortex-a53": "ARM Cortex-A53",
        "cortex-a78": "ARM Cortex-A78"}


def main(url: str, parity: Path, cpu: str) -> int:
    for _ in range(600):  # an emulated interpreter takes a while to import onnxruntime
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        print(f"the board at {url} did not start", file=sys.stderr)
        return 1
    edgec = Path(sys.executable).parent / "edgec"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        done = subprocess.run([str(edgec), "convert", str(parity / "model.pt2"), "--device", "rpi4", "--calib",
                               str(parity / "calib.npz"), "--out", f"{tmp}/out", "--measure-on", url, "--token", TOKEN,
                               "--json"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        report = json.loads(done.stdout)
        page = Path(f"{tmp}/out/report.md").read_text()
    board, search = report["board"], report["search"]
    print(page[page.index("## Measured on the board"):page.index("## Candidates tried")])
    print(f"convert --measure-on took {wall:.0f} s, {board['seconds']:.0f} s of it on the board; shipped "
          f"{search['shipped']}")
    problems = []
    if board["board"]["arch"] != "aarch64":
        problems.append(f"the board says it is {board['board']['arch']}, not aarch64")
    if board["board"]["cpu"] != CPUS.get(cpu, board["board"]["cpu"]):
        problems.append(f"the board says its CPU is {board['board']['cpu']}, not {CPUS[cpu]}")
    within = [c for c in search["candidates"] if c["status"] in ("shipped", "within budget", "slower", "too large")]
    problems += [f"{c['label']} was not timed on the board" for c in within if not c.get("board")]
    problems += [f"{c['label']}: {c['board']['parity']}" for c in within
                 if c.get("board") and "give the host's answers" not in (c["board"]["parity"] or "")]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
