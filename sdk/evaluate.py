"""Measure an artifact against the original: fidelity on held-out samples, latency, memory.

Everything here is measured on this host; nothing is estimated from MAC counts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    """How closely one model's outputs follow another's on the same samples.

    Attributes:
        samples: Number of held-out samples compared.
        max_abs_error: Largest absolute difference over every output element.
        mean_abs_error: Mean absolute difference.
        cosine_min: Lowest per-sample cosine similarity (outputs flattened per sample).
        cosine_mean: Mean per-sample cosine similarity.
        top1_agreement: Share of samples whose arg-max class matches (classifiers only).
        accuracy: Top-1 accuracy against labels, when labels were given.
    """

    samples: int
    max_abs_error: float
    mean_abs_error: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float | None = None
    accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_classifier(outputs: Sequence[np.ndarray]) -> bool:
    """A first output of shape (batch, classes>1) is treated as class scores."""
    return bool(outputs) and outputs[0].ndim == 2 and outputs[0].shape[1] > 1


def _per_sample(outputs: Sequence[np.ndarray]) -> np.ndarray:
    n = outputs[0].shape[0]
    return np.concatenate([o.reshape(n, -1).astype(np.float64) for o in outputs], axis=1)


def compare(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    labels: np.ndarray | None = None,
) -> Fidelity:
    """Compare ``candidate`` outputs with ``reference`` outputs (same samples, same order)."""
    ref, cand = _per_sample(reference), _per_sample(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {cand.shape}")
    diff = np.abs(ref - cand)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = np.sum(ref * cand, axis=1)
    # Two all-zero outputs agree perfectly; one zero and one not do not agree at all.
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    cosine = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    top1 = accuracy = None
    if is_classifier(reference):
        ref_cls = reference[0].argmax(axis=1)
        cand_cls = candidate[0].argmax(axis=1)
        top1 = float(np.mean(ref_cls == cand_cls))
        if labels is not None:
            accuracy = float(np.mean(cand_cls == labels))
    return Fidelity(
        samples=int(ref.shape[0]),
        max_abs_error=float(diff.max()),
        mean_abs_error=float(diff.mean()),
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        top1_agreement=top1,
        accuracy=accuracy,
    )


def accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None or not is_classifier(outputs):
        return None
    return float(np.mean(outputs[0].argmax(axis=1) == labels))


def run_batched(fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]], batches: Any) -> list[np.ndarray]:
    """Run ``fn`` over batches and stack each output along the first axis."""
    parts = [fn(b) for b in batches]
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


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


