"""The bundle's drift reference (``drift.json``): what the shipped model sees and answers on the user's data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.bundle.manifest import Manifest
from ...runtime.serve.drift import REFERENCE_NAME, reference

MAX_SAMPLES = 5000  # quantiles from more move little; a detector's data can be large
BATCH = 64


def write_drift_reference(stage: Path, model: Any, data: Any, manifest: Manifest,
                          detectors: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """Run ``model`` (the bundle as the runtime loads it) on the held-out samples, then the calibration
    samples (up to ``MAX_SAMPLES`` in all), and write the distributions boards compare their served data
    with (:mod:`edgec.runtime.serve.drift`); ``detectors``: how to decode each detection-head output. None,
    and no file, when the data are synthetic (random inputs describe no deployment) or no tensor has a batch
    axis to take statistics along."""
    if data.synthetic:
        return None
    whole = set(data.holdout.whole)
    inputs = {s.name: s.shape for s in manifest.inputs if s.name not in whole and _batched(s.shape)}
    outputs = {s.name: s.shape for s in manifest.outputs if _batched(s.shape)}
    if not inputs or (whole and not outputs):
        return None
    seen_in: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    seen_out: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for batch in islice(_batches(data), -(-MAX_SAMPLES // BATCH)):
        answer = model.predict(batch)
        for name in inputs:
            seen_in[name].append(np.asarray(batch[name]))
        for name in outputs:
            seen_out[name].append(np.asarray(answer[name]))
    ref = reference({n: np.concatenate(a) for n, a in seen_in.items()}, {n: np.concatenate(a) for n, a in seen_out.items()},
                    inputs, outputs, {n: d for n, d in (detectors or {}).items() if n in outputs})
    path = stage / REFERENCE_NAME
    path.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    return path


def detection_heads(reference: Any, options: Any) -> dict[str, dict[str, Any]]:
    """The detection head the task check decoded (output name: layout, score threshold, NMS IoU), or none."""
    task = reference.task
    if task.name != "detect" or task.output is None:
        return {}
    return {reference.names[task.output]: {"layout": task.layout, "threshold": options.score_threshold,
                                           "iou": options.iou}}


def _batched(shape: tuple[int | None, ...]) -> bool:
    """Whether the tensor's first axis is the batch (a state ``[2, batch, 128]`` is not)."""
    return bool(shape) and shape[0] in (None, 1)


def _batches(data: Any) -> Iterator[dict[str, np.ndarray]]:
    yield from data.holdout.batches(BATCH)
    if data.calib is not None:
        yield from data.calib.batches(BATCH)
