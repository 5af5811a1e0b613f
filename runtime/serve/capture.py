"""Data capture (opt-in, off unless ``[capture] enabled = true``): a bounded ring, on the board's own disk,
of sampled served inputs with the model's answers, for the next conversion to calibrate and verify on.

Nothing is sent anywhere: the samples stay in ``[capture] folder`` until someone with the admin token
fetches them (``GET /v1/models/NAME/capture``, or ``edgec fleet capture pull``). The ring is bounded
three ways: ``max_samples`` files and ``max_mb`` on disk per model (the oldest go first), and
``per_minute`` samples written. Which samples: every one the model answered with a confidence under
``low_confidence`` (a classifier's top class), ``keep_share`` of the others, ten times as many while
the model's drift alert is raised. The samples come from the batches the drift watch takes, off the
request path and within its CPU budget (:mod:`.driftwatch`).

One sample is one ``.npz``: ``input.<name>`` and ``output.<name>`` (one row each), ``reason`` and
``time``. A pull stacks a model's samples into one ``.npz`` keyed by the input names (what
``edgec convert --calib/--eval`` takes) plus ``output.<name>``, ``reason`` and ``time``.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import CaptureConfig
from .drift import MAX_ROWS, is_classifier, is_probabilities, top_probability

log = logging.getLogger("edgec.runtime")
SUFFIX = ".npz"


def confidence(outputs: dict[str, np.ndarray], rows: int) -> np.ndarray | None:
    """Per row, the lowest top-class probability over the classifier outputs (rank 2, 2 to 1000 float
    scores; a softmax when they are not probabilities); None when the model has none."""
    found = None
    for scores in outputs.values():
        s = np.asarray(scores)
        if not is_classifier(s) or len(s) < rows:
            continue
        s = s[:rows].astype(np.float64)
        top = top_probability(s, softmax=not is_probabilities(s))
        found = top if found is None else np.minimum(found, top)
    return found


class Capture:
    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._tokens = float(config.per_minute)
        self._refilled = time.monotonic()
        self._seq = int(time.time() * 1000)  # file names sort by time across restarts
        self.written = 0

    def folder(self, model: str) -> Path:
        return self.config.folder / model  # (model names are the runtime's, never a request's string)

    def offer(self, name: str, feeds: dict[str, Any], outputs: dict[str, Any], *, drifting: bool,
              batched: set[str] | None = None) -> int:
        """Keep some rows of a served batch (of its tensors in ``batched``, those whose first axis is the
        batch: a recurrent state ``[2, batch, 128]`` has no rows to keep); returns how many were written."""
        if not self.config.enabled:
            return 0
        if batched is not None:
            feeds = {k: v for k, v in feeds.items() if k in batched}
            outputs = {k: v for k, v in outputs.items() if k in batched}
        if not feeds:
            return 0
        rows = min(MAX_ROWS, *(len(np.atleast_1d(a)) for a in (*feeds.values(), *outputs.values())))
        conf = confidence(outputs, rows)
        kept = 0
        for row in range(rows):
            low = conf is not None and conf[row] < self.config.low_confidence
            share = 1.0 if low else min(1.0, self.config.keep_share * (10 if drifting else 1))
            if self._rng.random() >= share or not self._take_token():
                continue
            reason = "low_confidence" if low else ("drift" if drifting else "sample")
            self._write(name, {f"input.{k}": np.asarray(v)[row:row + 1] for k, v in feeds.items()}
                        | {f"output.{k}": np.asarray(v)[row:row + 1] for k, v in outputs.items()}
                        | {"reason": np.array([reason]), "time": np.array([time.time()])})
            kept += 1
        return kept

    def _take_token(self) -> bool:
        now = time.monotonic()
        per_s = self.config.per_minute / 60.0
        self._tokens = min(float(self.config.per_minute), self._tokens + (now - self._refilled) * per_s)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _write(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._seq += 1
            path = folder / f"{self._seq:016d}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)  # a pull never sees half a sample
        self.written += 1
        self._prune(folder)

    def _prune(self, folder: Path) -> None:
        files = sorted(folder.glob(f"*{SUFFIX}"))
        sizes = [f.stat().st_size for f in files]
        total, budget = sum(sizes), int(self.config.max_mb * 2**20)
        drop = 0
        while drop < len(files) and (len(files) - drop > self.config.max_samples or total > budget):
            total -= sizes[drop]
            drop += 1
        for f in files[:drop]:
            f.unlink(missing_ok=True)

    def describe(self, name: str) -> dict[str, Any]:
        files = list(self.folder(name).glob(f"*{SUFFIX}")) if self.config.enabled else []
        return {"enabled": self.config.enabled, "samples": len(files), "bytes": sum(f.stat().st_size for f in files)}

    def pull(self, name: str) -> bytes:
        """A model's samples as one ``.npz`` (the newest shape's, when a new version changed the inputs)."""
        samples = []
        for path in sorted(self.folder(name).glob(f"*{SUFFIX}")):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    samples.append({k: npz[k] for k in npz.files})
            except (OSError, ValueError) as exc:  # a damaged file is skipped, and said
                log.warning("capture %s: %s skipped: %s", name, path.name, exc)
        shapes = lambda s: {k: v.shape[1:] for k, v in s.items()}  # noqa: E731
        if samples:
            newest = shapes(samples[-1])
            samples = [s for s in samples if shapes(s) == newest]
        stacked = {(k[len("input."):] if k.startswith("input.") else k): np.concatenate([s[k] for s in samples])
                   for k in (samples[0] if samples else {})}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **stacked)
        return buffer.getvalue()
