"""Drift: does a model on the board still see the data it was verified on?

``edgec convert`` runs the shipped model on the held-out samples and stores, in the bundle's
``drift.json`` (covered by the manifest's sha256 sums, hence by its signature), the distribution of
a few per-sample statistics:

- of every input: its mean (per channel when an image has 2 to 8 of them), its standard
  deviation, and the fraction of its values outside the range the held-out data spans;
- of every output: for a classifier's scores, the top class's confidence (after a softmax when
  the scores are logits) and, up to 32 classes, the predicted class; for a detector's head
  (YOLO-style, as the conversion verified it), the number of detections per image after the score
  threshold and NMS, and its detections' best and mean score; else its mean and standard deviation.

Each statistic's distribution is kept as up to ten bins between its quantiles on the held-out data,
plus a bin for values below and one for values above everything held out (a class is a bin of its own). The board bins the same statistics of what it serves over a sliding
window and compares the two with the **population stability index**,
``PSI = sum((w - r) * ln(w / r))`` over the bins (``r``: the reference's share of samples in a bin,
``w``: the window's, both smoothed so that an empty bin stays finite). A model's drift score is the
largest PSI of its statistics, with the statistic's name. By the usual reading, under 0.1 is no
shift, 0.1-0.25 a moderate one, over 0.25 a real one: the default alert threshold is 0.25.

Only numpy is imported; the host builds the reference with the same functions the board uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError

REFERENCE_NAME = "drift.json"
SCHEMA = 1
BINS = 10  # at most: fewer when the reference has under 500 samples (``bins_for``)
MIN_PER_BIN = 50
MAX_FEATURES = 64
MAX_EDGES = 64
MAX_REFERENCE_BYTES = 1 << 20
MAX_ROWS = 64  # rows of one batch taken into the window (a batch of 512 is a sample of 64)
MAX_CLASSES_BINNED = 32
STATS = ("mean", "std", "outside", "confidence", "class", "detections", "top_score", "mean_score")
DETECTION_STATS = ("detections", "top_score", "mean_score")
LAYOUTS = ("channels-first", "channels-last")


# -- statistics (both sides) -----------------------------------------------------------------------
def channel_axis(shape: Sequence[int | None]) -> int | None:
    """The channel axis of an image batch with 2 to 4 channels (NCHW or NHWC, whichever side is the
    small one: an 8x8 image is not 8 channels), else None."""
    if len(shape) != 4:
        return None
    first, last = shape[1], shape[-1]
    small = lambda n: isinstance(n, int) and n <= 4  # noqa: E731
    if small(first) and not small(last):
        return 1 if first >= 2 else None
    if small(last) and not small(first):
        return 3 if last >= 2 else None
    return None


def values(feature: Mapping[str, Any], array: np.ndarray) -> np.ndarray:
    """One statistic per row of ``array`` (float64)."""
    a = np.asarray(array)
    n = a.shape[0] if a.ndim else 1
    stat = feature["stat"]
    if stat == "class":
        return a.reshape(n, -1).argmax(1).astype(np.float64)
    if stat in DETECTION_STATS:
        return detection_values(feature, a)
    a = a.astype(np.float32, copy=False)
    if feature.get("channel") is not None:
        a = np.take(a, feature["channel"], axis=feature["axis"])
    flat = a.reshape(n, -1)
    if stat == "mean":
        return flat.mean(1, dtype=np.float64)
    if stat == "std":
        return flat.std(1, dtype=np.float64)
    if stat == "outside":
        return ((flat < feature["low"]) | (flat > feature["high"])).mean(1)
    return top_probability(flat, softmax=bool(feature.get("softmax")))


def detection_values(feature: Mapping[str, Any], head: np.ndarray) -> np.ndarray:
    """Per image of a detector's head, the detections' count (after the threshold and NMS), best or mean score."""
    from ..detection import decode

    rows = head if feature["layout"] == "channels-first" else np.swapaxes(head, 1, 2)
    out = np.zeros(len(rows), dtype=np.float64)
    for i, image in enumerate(rows):
        scores = decode(image, feature["threshold"], feature["iou"])[:, 4]
        if feature["stat"] == "detections":
            out[i] = len(scores)
        elif len(scores):
            out[i] = scores.max() if feature["stat"] == "top_score" else scores.mean()
    return out


def is_classifier(scores: np.ndarray) -> bool:
    """A classifier's scores: float rows of 2 to 1000 classes."""
    return scores.ndim == 2 and 2 <= scores.shape[1] <= 1000 and scores.dtype.kind == "f"


def is_probabilities(scores: np.ndarray) -> bool:
    """Rows already in [0, 1] that sum to 1 (else they are logits)."""
    rows = scores.astype(np.float64)
    return bool(np.all(rows >= 0) and np.all(rows <= 1) and np.allclose(rows.sum(1), 1, atol=1e-3))


def top_probability(scores: np.ndarray, *, softmax: bool) -> np.ndarray:
    """Per row, the top class's probability (float64), after a softmax when the scores are logits."""
    if softmax:
        exp = np.exp(scores - scores.max(1, keepdims=True))
        return (1.0 / exp.sum(1)).astype(np.float64)  # exp(0) / sum
    return scores.max(1).astype(np.float64)


def binned(edges: Any, v: np.ndarray) -> np.ndarray:
    """Bin ``i`` holds ``edges[i-1] < v <= edges[i]`` (a point mass stays in the bin its edge closes)."""
    return np.searchsorted(edges, v, side="left")


def bins_for(samples: int) -> int:
    """Bins per statistic: ten, or fewer so that each keeps ~50 reference samples (a PSI of small samples is
    biased upwards by about (bins - 1) / samples on each side)."""
    return max(3, min(BINS, samples // MIN_PER_BIN))


def _plan(side: str, name: str, shape: Sequence[int | None], sample: np.ndarray,
          detector: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The statistics kept for one tensor (without their bins yet); ``detector``: how to decode a detection head."""
    base = {"side": side, "tensor": name}
    if side == "output" and detector is not None:
        how = {"layout": detector["layout"], "threshold": float(detector["threshold"]), "iou": float(detector["iou"])}
        return [{**base, **how, "name": f"{name}.{stat}", "stat": stat} for stat in DETECTION_STATS]
    if side == "output" and is_classifier(sample):
        plan = [{**base, "name": f"{name}.confidence", "stat": "confidence", "softmax": not is_probabilities(sample)}]
        if sample.shape[1] <= MAX_CLASSES_BINNED:
            plan.append({**base, "name": f"{name}.class", "stat": "class", "classes": int(sample.shape[1])})
        return plan
    axis = channel_axis(shape) if sample.ndim == 4 else None
    if axis is None:
        plan = [{**base, "name": f"{name}.mean", "stat": "mean"}]
    else:
        plan = [{**base, "name": f"{name}.mean[{c}]", "stat": "mean", "channel": c, "axis": axis}
                for c in range(sample.shape[axis])]
    plan.append({**base, "name": f"{name}.std", "stat": "std"})
    if side == "input" and sample.dtype.kind == "f":
        plan.append({**base, "name": f"{name}.outside", "stat": "outside",
                     "low": float(np.min(sample)), "high": float(np.max(sample))})
    return plan


def reference(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
              input_shapes: Mapping[str, Sequence[int | None]], output_shapes: Mapping[str, Sequence[int | None]],
              detectors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The reference distributions (``drift.json``) of held-out ``inputs`` and the model's ``outputs`` on them;
    ``detectors``: per detection-head output, its ``layout``, score ``threshold`` and NMS ``iou``."""
    features = []
    rows = len(np.asarray(next(iter(inputs.values()))))
    bins = bins_for(rows)
    for side, tensors, shapes in (("input", inputs, input_shapes), ("output", outputs, output_shapes)):
        for name, array in tensors.items():
            array = np.asarray(array)
            detector = (detectors or {}).get(name) if side == "output" else None
            for feature in _plan(side, name, shapes.get(name, array.shape), array, detector):
                v = values(feature, array)
                if feature["stat"] == "class":
                    edges = [k + 0.5 for k in range(feature["classes"] - 1)]
                elif feature["stat"] == "detections":  # a count: a bin per count seen, and one past the most
                    edges = [k + 0.5 for k in range(min(int(v.max()) + 1, MAX_EDGES))] or [0.5]
                else:  # between the quantiles, and a bin each for below and above all the held-out data
                    inner = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
                    edges = np.unique([np.nextafter(v.min(), -np.inf), *inner, v.max()]).tolist()
                counts = np.bincount(binned(edges, v), minlength=len(edges) + 1)
                features.append({**feature, "edges": edges, "expected": (counts / counts.sum()).tolist()})
    return {"schema": SCHEMA, "samples": rows, "features": features[:MAX_FEATURES]}


# -- the board's side -------------------------------------------------------------------------------
def read_reference(folder: Path, files: Mapping[str, str], inputs: Sequence[str], outputs: Sequence[str]
                   ) -> dict[str, Any] | None:
    """A bundle's ``drift.json``, checked against its sha256 and for sense; None when it has none.

    Raises:
        BundleError: The file does not match the manifest, or is not a reference this runtime can use.
    """
    if REFERENCE_NAME not in files:
        return None
    path = Path(folder) / REFERENCE_NAME
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_REFERENCE_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{REFERENCE_NAME} of {Path(folder).name}: {exc.strerror}") from None
    if len(data) > MAX_REFERENCE_BYTES or hashlib.sha256(data).hexdigest() != files[REFERENCE_NAME]:
        raise BundleError(f"{REFERENCE_NAME} of {Path(folder).name} does not match the manifest's sha256")
    try:
        ref = json.loads(data)
        return _checked(ref, set(inputs), set(outputs))
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{REFERENCE_NAME} of {Path(folder).name} is not a drift reference: {exc}") from None


def _checked(ref: Any, inputs: set[str], outputs: set[str]) -> dict[str, Any]:
    if not isinstance(ref, dict) or ref.get("schema") != SCHEMA:
        raise ValueError(f"schema {ref.get('schema') if isinstance(ref, dict) else None!r}, not {SCHEMA}")
    features = ref["features"]
    if not isinstance(features, list) or not 0 < len(features) <= MAX_FEATURES:
        raise ValueError(f"1 to {MAX_FEATURES} features expected")
    for f in features:
        names = inputs if f["side"] == "input" else outputs if f["side"] == "output" else set()
        if f["tensor"] not in names or f["stat"] not in STATS or not isinstance(f["name"], str):
            raise ValueError(f"feature {f.get('name')!r} names no {f.get('side')} of the model")
        edges, expected = f["edges"], f["expected"]
        if (not isinstance(edges, list) or len(edges) > MAX_EDGES or not isinstance(expected, list)
                or len(expected) != len(edges) + 1):
            raise ValueError(f"feature {f['name']!r}: bad bins")
        e, p = np.asarray(edges, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        if not (np.all(np.isfinite(e)) and np.all(np.diff(e) > 0) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-6):
            raise ValueError(f"feature {f['name']!r}: bins not increasing, or shares not summing to 1")
        if f.get("channel") is not None and not (isinstance(f["channel"], int) and f.get("axis") in (1, 3)):
            raise ValueError(f"feature {f['name']!r}: bad channel")
        if f["stat"] == "outside" and not all(isinstance(f[k], (int, float)) for k in ("low", "high")):
            raise ValueError(f"feature {f['name']!r}: bad range")
        if f["stat"] in DETECTION_STATS and not (f.get("layout") in LAYOUTS and _share(f.get("threshold"))
                                                 and _share(f.get("iou"))):
            raise ValueError(f"feature {f['name']!r}: a detection statistic needs a layout, a threshold and an iou")
    return ref


def _share(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """The population stability index of ``counts`` (the window) against the ``expected`` shares."""
    r = np.maximum(expected, 1e-3)
    r = r / r.sum()
    w = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    return float(np.sum((w - r) * np.log(w / r)))


class DriftMonitor:
    """One model version's statistics over its last ``window`` served samples."""

    def __init__(self, ref: Mapping[str, Any], *, window: int = 500) -> None:
        self.features = list(ref["features"])
        self.edges = [np.asarray(f["edges"], dtype=np.float64) for f in self.features]
        self.expected = [np.asarray(f["expected"], dtype=np.float64) for f in self.features]
        self.window = window
        self._tensors = sorted({(f["side"], f["tensor"]) for f in self.features})  # all batch-first
        count, width = len(self.features), MAX_EDGES + 1
        self._ring = np.zeros((window, count), dtype=np.uint8)  # each sample's bin per statistic
        self._counts = np.zeros((count, width), dtype=np.int64)
        self._offsets = np.arange(count) * width  # a statistic's bins in the flattened counts
        # The reference's shares as psi() smooths them, one row per statistic, in one array: all scored at once.
        self._nbins = np.array([len(e) for e in self.expected], dtype=np.float64)
        self._mask = np.zeros((count, width), dtype=bool)
        self._r = np.ones((count, width))
        for j, expected in enumerate(self.expected):
            floored = np.maximum(expected, 1e-3)
            self._r[j, :len(expected)] = floored / floored.sum()
            self._mask[j, :len(expected)] = True
        self.samples = 0  # in the window
        self.seen = 0  # in all
        self._pos = 0

    def add(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Take a served batch (at most ``MAX_ROWS`` of its rows) into the window."""
        rows = min(MAX_ROWS, self.window, *(len(np.atleast_1d((inputs if side == "input" else outputs)[name]))
                                            for side, name in self._tensors))
        bins = np.empty((rows, len(self.features)), dtype=np.int64)
        for j, (feature, edges) in enumerate(zip(self.features, self.edges)):
            tensor = (inputs if feature["side"] == "input" else outputs)[feature["tensor"]]
            bins[:, j] = binned(edges, values(feature, np.asarray(tensor)[:rows]))
        slots = (self._pos + np.arange(rows)) % self.window
        counts = self._counts.reshape(-1)
        old = self._ring[slots[slots < self.samples]]  # the samples these rows push out of a full window
        if len(old):
            counts -= np.bincount((old + self._offsets).ravel(), minlength=counts.size)
        self._ring[slots] = bins
        counts += np.bincount((bins + self._offsets).ravel(), minlength=counts.size)
        self.samples = min(self.window, self.samples + rows)
        self._pos = (self._pos + rows) % self.window
        self.seen += rows

    def scores(self) -> dict[str, float]:
        """Each statistic's PSI over the window (:func:`psi` for all of them at once)."""
        w = (self._counts + 0.5) / (self._counts.sum(1, keepdims=True) + 0.5 * self._nbins[:, None])
        terms = np.where(self._mask, (w - self._r) * np.log(w / self._r), 0.0)
        return {f["name"]: float(v) for f, v in zip(self.features, terms.sum(1))}

    def score(self) -> tuple[float, str]:
        """The drift score (the largest PSI) and the statistic it comes from."""
        scores = self.scores()
        worst = max(scores, key=scores.get)
        return scores[worst], worst
