"""Latency measured where the code runs (the host while converting, a board measuring candidates): single
calls timed after warm-up, and paired speed-ups.

Nothing here is estimated from MAC counts; a speed-up is always two real runs timed in
alternating rounds on the same machine state.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Latency:
    """Wall time of single-sample calls.

    Attributes:
        p50_ms: Median latency in milliseconds.
        p90_ms: 90th percentile latency.
        runs: Timed calls (after warm-up).
        threads: Threads the model ran with.
    """

    p50_ms: float
    p90_ms: float
    runs: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(
    fn: Callable[[], Any],
    *,
    threads: int,
    warmup: int = 10,
    min_runs: int = 30,
    max_runs: int = 2000,
    budget_s: float = 1.0,
) -> Latency:
    """Time ``fn`` after warm-up: at least ``min_runs`` calls, more while under ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _latency(times, threads)


def paired_speedup(
    reference: Callable[[], Any],
    candidate: Callable[[], Any],
    *,
    threads: int,
    rounds: int = 7,
    budget_s: float = 1.0,
) -> tuple[float, Latency, Latency]:
    """How much faster ``candidate`` runs than ``reference``, timed in alternating rounds.

    Timing the two back to back in short alternating rounds exposes both to the same
    machine state (frequency, other processes); the speed-up is the median of the per-round
    ratios of median latencies, which is far steadier than two separate measurements.

    Returns:
        The speed-up (>1: ``candidate`` is faster) and both latencies over all rounds.
    """
    for _ in range(3):
        reference()
        candidate()
    start = time.perf_counter()
    reference()
    candidate()
    pair = max(time.perf_counter() - start, 1e-6)
    per_round = int(min(200, max(3, budget_s / rounds / pair)))
    ratios, ref_all, cand_all = [], [], []
    for _ in range(rounds):
        ref_t, cand_t = [], []
        for fn, times in ((reference, ref_t), (candidate, cand_t)):
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        ratios.append(statistics.median(ref_t) / statistics.median(cand_t))
        ref_all += ref_t
        cand_all += cand_t
    return statistics.median(ratios), _latency(ref_all, threads), _latency(cand_all, threads)


def _latency(times: list[float], threads: int) -> Latency:
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return Latency(p50_ms=statistics.median(times) * 1e3, p90_ms=p90 * 1e3, runs=len(times), threads=threads)
