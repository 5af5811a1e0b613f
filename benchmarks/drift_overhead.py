"""What watching drift costs a served request: the digits CNN at batch 1, drift statistics off, on (the
default budget, 2% of one core) and on for every request (``cpu_budget = 1``, the worst case).

Run by hand: ``.venv/bin/python benchmarks/drift_overhead.py`` (``--requests``, ``--rounds``). It serves
the committed fixture bundles (tests/fixtures/bundles, with their ``drift.json``) through
``Runtime.predict`` in one process, as a board's HTTP server calls it, with the real test digits. The
three settings run in alternating rounds, each round its own runtime; the table gives, per bundle and
setting, p50 and mean latency over all rounds, their overhead against "off", how many requests were
binned, and the CPU the statistics thread spent per request.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SETTINGS = {"off": {"enabled": False}, "default": {}, "every request": {"cpu_budget": 1.0}}


def round_of(bundle: Path, drift: dict, x: np.ndarray, requests: int) -> tuple[list[float], int, float]:
    from edgec.runtime.config import DriftConfig, ModelConfig, ServeConfig
    from edgec.runtime.serve.runtime import Runtime

    runtime = Runtime(ServeConfig(models=(ModelConfig("digits", bundle),), isolate=False, drift=DriftConfig(**drift)))
    try:
        for i in range(200):  # warm-up
            runtime.predict("digits", {"input": x[i % len(x):i % len(x) + 1]})
        runtime.drift.wait_idle()
        taken0, busy0 = runtime.drift.taken, runtime.drift.busy_s
        times = []
        for i in range(requests):
            one = x[i % len(x):i % len(x) + 1]
            started = time.perf_counter()
            runtime.predict("digits", {"input": one})
            times.append(time.perf_counter() - started)
        runtime.drift.wait_idle()
        return times, runtime.drift.taken - taken0, runtime.drift.busy_s - busy0
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per setting")
    parser.add_argument("--bundles", default="onnx-int8,tflite-int8", help="fixture bundles, comma-separated")
    args = parser.parse_args()
    with np.load(FIXTURES / "digits-test.npz") as npz:
        x = npz["x"]
    print("| bundle | drift | p50 µs | mean µs | p50 overhead | mean overhead | binned | statistics CPU per request |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.bundles.split(","):
        bundle = FIXTURES / "bundles" / name
        results: dict[str, list] = {s: [[], 0, 0.0] for s in SETTINGS}
        for _ in range(args.rounds):
            for setting, drift in SETTINGS.items():
                times, taken, busy = round_of(bundle, drift, x, args.requests)
                results[setting][0] += times
                results[setting][1] += taken
                results[setting][2] += busy
        base = results["off"][0]
        p50_0, mean_0 = np.median(base), np.mean(base)
        total = args.requests * args.rounds
        for setting, (times, taken, busy) in results.items():
            p50, mean = np.median(times), np.mean(times)
            print(f"| {name} | {setting} | {p50 * 1e6:.1f} | {mean * 1e6:.1f} | {100 * (p50 / p50_0 - 1):+.1f}% | "
                  f"{100 * (mean / mean_0 - 1):+.1f}% | {taken}/{total} | {busy / total * 1e6:.2f} µs |")


if __name__ == "__main__":
    main()
