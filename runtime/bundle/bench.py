"""A bundle timed where it runs: the board side of ``edgec convert --measure-on``.

:func:`measure_loaded` times a loaded bundle on its own golden inputs, at batch 1 and at the
batch the host asks for (the serving batch), after warm-up, and reads the memory loading and
running it took. Given a reference bundle (the fp32 artifact), it then times the two in
alternating rounds, as the host's search does, so a speed-up is not two measurements taken
seconds apart. It runs in the probe's child process (:mod:`.probe`), after the golden parity
check, so a candidate that crashes, hangs or answers differently never reaches the serving process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..timing import measure_latency, paired_speedup

if TYPE_CHECKING:
    from .model import LoadedModel
    from .parity import Parity

MAX_BATCH = 256
MAX_BUDGET_S = 30.0


def rows(feeds: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``n`` rows of the golden inputs (repeated when there are fewer), along the batch axis."""
    out = {}
    for name, array in feeds.items():
        have = len(array)
        out[name] = array[:n] if have >= n else np.concatenate([array] * -(-n // have))[:n]
    return out


def fixed_batch(model: LoadedModel) -> int | None:
    """The batch the model's inputs are fixed to (``None``: any batch)."""
    sizes = {spec.shape[0] for spec in model.inputs if spec.shape}
    fixed = {s for s in sizes if s is not None and s > 0}
    return min(fixed) if fixed else None


def bench(model: LoadedModel, *, batch: int, budget_s: float, threads: int) -> dict[str, Any]:
    """p50/p90 of ``model`` at batch 1 and at ``batch`` on its golden inputs, each for about ``budget_s``.

    Returns:
        ``{"batch1": {...}, "batch": {...} | None, "batch_size": n, "note": why a batch was not timed}``;
        each timing is :class:`~edgec.runtime.timing.Latency`'s dict plus ``per_sample_ms``.
    """
    golden = model.golden
    if golden is None:
        raise ValueError("the bundle has no golden samples to time it on")
    feeds = golden[0]
    out: dict[str, Any] = {"batch_size": batch, "batch": None, "note": None}
    fixed = fixed_batch(model)
    sizes = [1] if batch == 1 else [1, batch]
    if fixed is not None and fixed != 1:
        sizes, out["batch_size"] = [fixed], fixed
        out["note"] = f"the model takes batches of {fixed} only"
    elif fixed == 1 and batch != 1:
        sizes, out["note"] = [1], "the model takes batch 1 only"
    for n in sizes:
        one = rows(feeds, n)
        latency = measure_latency(lambda: model.predict(one), threads=threads, budget_s=budget_s).to_dict()
        latency["per_sample_ms"] = latency["p50_ms"] / n
        out["batch1" if n == 1 else "batch"] = latency
    if "batch1" not in out:
        out["batch1"] = None
    return out


def measure_loaded(model: LoadedModel, parity: Parity | None, measure: dict[str, Any], *, threads: int | None,
                   rss_before: int | None) -> dict[str, Any]:
    """(in the probe's child, ``model`` loaded and checked) Its timings and memory; then, with
    ``measure["reference"]``, the reference bundle loaded and checked too, and both timed in alternating rounds.

    Raises:
        BundleError: The reference does not load or fails its own golden check.
    """
    from ..system import peak_rss_bytes
    from .model import load
    from .parity import require_parity

    batch = min(max(1, int(measure["batch"])), MAX_BATCH)
    budget = min(max(0.05, float(measure["budget_s"])), MAX_BUDGET_S)
    threads = threads or model.manifest.threads
    timing = bench(model, batch=batch, budget_s=budget, threads=threads)
    peak = peak_rss_bytes()  # the candidate's own: read before a reference is loaded beside it
    out = {"parity": parity.describe() if parity is not None else None, "load_ms": model.load_seconds * 1e3,
           "rss_before_bytes": rss_before, "peak_rss_bytes": peak,
           "added_rss_bytes": peak - rss_before if peak is not None and rss_before is not None else None,
           "timing": timing, "paired": None}
    if measure.get("reference"):
        reference = load(measure["reference"], threads=threads)
        reference.warm_up()
        require_parity(reference)
        one = rows(model.golden[0], 1)
        speedup, ref_latency, cand_latency = paired_speedup(lambda: reference.predict(one), lambda: model.predict(one),
                                                            threads=threads, budget_s=2 * budget)
        out["paired"] = {"speedup": speedup, "reference_p50_ms": ref_latency.p50_ms,
                         "p50_ms": cand_latency.p50_ms, "runs": cand_latency.runs}
    return out
