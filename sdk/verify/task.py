"""What the model is for, and whether an artifact still does it: classify, detect, segment, embed.

A tensor metric can pass while the task fails (a detector's scores collapse to 0 behind box
coordinates in the hundreds). Where the task is known, verification also measures it the
way a user would: top-1 agreement for a classifier, recall of the original's detections
after decode and NMS for a detector, per-pixel agreement for a segmenter, nearest-neighbour
agreement for an embedder. ``--task auto`` guesses from the outputs and says what it guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ...errors import ValidationError
from ...runtime.detection import decode_all, match

TASKS = ("auto", "classify", "detect", "segment", "embed", "raw")
# Task-metric floors when none is given: detect = recall of the original's detections,
# segment = share of pixels given the same class. A classifier's budget is its accuracy or
# cosine; an embedder's is its per-sample cosine (the cosine budget), with nearest-neighbour
# agreement reported beside it.
DEFAULT_FLOORS = {"detect": 0.95, "segment": 0.95}
# Detections this far under the threshold still count as found (detect): a score moving from
# 0.252 to 0.248 is a score error, not a lost detection.
SCORE_MARGIN = 0.05
# Mean |score error| of matched detections allowed (detect).
DEFAULT_MAX_SCORE_ERROR = 0.1


@dataclass(frozen=True)
class TaskOptions:
    """How to judge an artifact on the model's task.

    Attributes:
        task: ``auto`` (guessed from the outputs), ``classify``, ``detect``, ``segment``,
            ``embed`` or ``raw`` (tensor fidelity only).
        output: The output holding class scores or the detection head; default: guessed.
        channel_axes: Per-output feature axis, ``("scores=1",)`` or ``("2",)`` for all outputs;
            default: from each output's shape.
        score_threshold: Detections below this score are dropped (detect).
        iou: NMS IoU threshold (detect).
        min_task: Floor of the task metric; default per task (detect 0.95 recall,
            segment 0.95 pixel agreement; none for classify and embed, whose budget is accuracy
            or cosine).
        max_score_error: Mean |score difference| of matched detections allowed (detect).

    Example:
        >>> TaskOptions(task="detect", score_threshold=0.3)
    """

    task: str = "auto"
    output: str | None = None
    channel_axes: tuple[str, ...] = ()
    score_threshold: float = 0.25
    iou: float = 0.45
    min_task: float | None = None
    max_score_error: float = DEFAULT_MAX_SCORE_ERROR

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValidationError(f"unknown task {self.task!r}: choose one of {', '.join(TASKS)}")
        for name, value in (("score threshold", self.score_threshold), ("NMS IoU", self.iou)):
            if not 0.0 < value < 1.0:
                raise ValidationError(f"the {name} must be between 0 and 1, got {value}")
        if self.min_task is not None and not 0.0 <= self.min_task <= 1.0:
            raise ValidationError(f"--min-task must be between 0 and 1, got {self.min_task}")
        if not 0.0 < self.max_score_error <= 1.0:
            raise ValidationError(f"--max-score-error must be in (0, 1], got {self.max_score_error}")
        self.axes({})  # syntax check

    def axes(self, names: dict[str, int]) -> dict[int, int]:
        """``channel_axes`` resolved against ``{output name: index}``: ``{output index: axis}``
        (``-1`` as the key: every output).

        Raises:
            ValidationError: A malformed entry or an unknown output name.
        """
        found: dict[int, int] = {}
        for item in self.channel_axes:
            name, _, axis = item.rpartition("=")
            try:
                value = int(axis)
            except ValueError:
                raise ValidationError(f"--channel-axis takes AXIS or OUTPUT=AXIS (an integer), got {item!r}") from None
            if not name:
                found[-1] = value
            elif names:
                if name not in names:
                    raise ValidationError(f"--channel-axis names output {name!r}; the model's outputs are "
                                          f"{', '.join(names)}")
                found[names[name]] = value
        return found


@dataclass(frozen=True)
class TaskMetric:
    """The task measured on the artifact against the original.

    Attributes:
        task: What was measured (``classify``, ``detect``, ...).
        metric: The metric's name, e.g. ``detection recall``.
        value: Its value (0-1, higher is better).
        floor: The budget's floor for it (``None``: reported only).
        details: More figures (detections counted, score error, top-5 agreement, ...).
    """

    task: str
    metric: str
    value: float
    floor: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def check(self) -> tuple[bool, list[str]]:
        """Whether the metric (and the detector's score error) is inside its budget; one line each."""
        lines, ok = [], True
        if self.floor is not None:
            good = self.value >= self.floor - 1e-12
            lines.append(f"{self.metric} {self.value:.3f} {'≥' if good else '<'} {self.floor:g}")
            ok = good
        limit = self.details.get("max_score_error")
        error = self.details.get("score_error")
        if limit is not None and error is not None:
            good = error <= limit + 1e-12
            lines.append(f"detection score error {error:.3f} {'≤' if good else '>'} {limit:g}")
            ok = ok and good
        return ok, lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    """The task of one model, resolved: which output it reads and how.

    Attributes:
        name: ``classify``, ``detect``, ``segment``, ``embed`` or ``raw``.
        output: Index of the output it reads (``None`` for raw).
        guessed: Whether it was guessed (``--task auto``).
        why: What the guess rests on.
        layout: For detect: ``channels-first`` (``[N, 4+C, A]``) or ``channels-last`` (``[N, A, 4+C]``).
    """

    name: str
    output: int | None
    guessed: bool
    why: str
    layout: str | None = None

    def describe(self, names: Sequence[str]) -> str:
        where = f" on output {names[self.output]!r}" if self.output is not None else ""
        return f"{self.name}{where} ({'guessed: ' if self.guessed else ''}{self.why})"


def resolve_task(options: TaskOptions, outputs: Sequence[np.ndarray], names: Sequence[str],
                 labels: np.ndarray | None = None) -> Task:
    """The task of a model from ``options`` and its reference outputs (held-out samples).

    Raises:
        ValidationError: A named output that does not exist, or a task its outputs cannot have.
    """
    index = None
    if options.output is not None:
        if options.output not in names:
            raise ValidationError(f"--task-output {options.output!r} is not an output; the model's outputs are "
                                  f"{', '.join(names)}")
        index = list(names).index(options.output)
    if options.task == "raw":
        return Task("raw", None, False, "asked for with --task raw")
    if options.task == "auto":
        return _guess(outputs, names, index, labels)
    pick = index
    if pick is None:
        fitting = [i for i, o in enumerate(outputs) if _fits(options.task, o)]
        pick = _scores_output(fitting, outputs, names, labels)[0] if options.task == "classify" and fitting \
            else (fitting[0] if fitting else None)
    if pick is None:
        raise ValidationError(f"--task {options.task} needs {_NEEDS[options.task]}; the model's outputs have shapes "
                              f"{', '.join(f'{n} {tuple(o.shape)}' for n, o in zip(names, outputs))}. "
                              "Name the output with --task-output, or use --task raw")
    out = outputs[pick]
    if not _fits(options.task, out):
        raise ValidationError(f"output {names[pick]!r} of shape {tuple(out.shape)} cannot be read as {options.task}: "
                              f"it needs {_NEEDS[options.task]}")
    layout = _detect_layout(out) if options.task == "detect" else None
    return Task(options.task, pick, False, f"asked for with --task {options.task}", layout)


_NEEDS = {
    "classify": "an output of shape [N, classes]",
    "detect": "a YOLO-style head [N, 4+C, anchors] or [N, anchors, 4+C] (xywh boxes, then class scores)",
    "segment": "an output of shape [N, classes, H, W] or [N, H, W, classes]",
    "embed": "an output of shape [N, features]",
}


def _fits(task: str, out: np.ndarray) -> bool:
    if task in ("classify", "embed"):
        return out.ndim == 2 and out.shape[1] > 1
    if task == "segment":
        return out.ndim == 4 and min(out.shape[1], out.shape[3]) > 1
    return out.ndim == 3 and _detect_layout(out) is not None


SCORE_NAMES = ("logit", "prob", "score", "class", "cls", "label", "pred")


def _scores_output(fitting: Sequence[int], outputs: Sequence[np.ndarray], names: Sequence[str],
                   labels: np.ndarray | None) -> tuple[int, str]:
    """Of several ``[N, C]`` outputs, the one holding class scores, and why.

    With labels: the one whose arg-max agrees with them most. Else a name that says scores
    (``logits``, ``probs``...), else rows that sum to 1 (a softmax), else the widest.
    """
    if len(fitting) == 1:
        return fitting[0], f"{outputs[fitting[0]].shape[1]} scores per sample"
    if labels is not None and labels.ndim == 1 and len(labels) == len(outputs[fitting[0]]):
        hits = {i: float(np.mean(outputs[i].argmax(axis=1) == labels)) for i in fitting
                if outputs[i].shape[1] > int(labels.max(initial=0))}
        if hits:
            best = max(hits, key=hits.get)
            return best, f"its arg-max agrees best with the labels ({100 * hits[best]:.0f}%)"
    named = [i for i in fitting if any(k in names[i].lower() for k in SCORE_NAMES)]
    if named:
        return named[0], f"its name {names[named[0]]!r} says scores"
    softmax = [i for i in fitting if outputs[i].min() >= 0 and np.allclose(outputs[i].sum(axis=1), 1, atol=1e-3)]
    if softmax:
        return softmax[0], "its rows sum to 1 (probabilities)"
    widest = max(fitting, key=lambda i: outputs[i].shape[1])
    return widest, f"the widest [N, C] output ({outputs[widest].shape[1]} columns); name another with --task-output"


def _detect_layout(out: np.ndarray) -> str | None:
    """``channels-first`` for ``[N, 4+C, A]``, ``channels-last`` for ``[N, A, 4+C]``, else ``None``."""
    if out.ndim != 3:
        return None
    a, b = out.shape[1], out.shape[2]
    if 5 <= a and 4 * a <= b:
        return "channels-first"
    if 5 <= b and 4 * b <= a:
        return "channels-last"
    return None


def _looks_like_head(out: np.ndarray) -> bool:
    """Class scores in [0, 1] after 4 box rows of non-negative pixel coordinates."""
    layout = _detect_layout(out)
    if layout is None or not np.isfinite(out).all():
        return False
    rows = out if layout == "channels-first" else np.swapaxes(out, 1, 2)
    boxes, scores = rows[:, :4], rows[:, 4:]
    return bool(scores.min() >= -1e-3 and scores.max() <= 1 + 1e-3 and boxes[:, 2:].min() >= 0
                and boxes.max() > 1.5)


def _guess(outputs: Sequence[np.ndarray], names: Sequence[str], index: int | None,
           labels: np.ndarray | None) -> Task:
    candidates = [index] if index is not None else range(len(outputs))
    for i in candidates:
        if _looks_like_head(outputs[i]):
            return Task("detect", i, True, f"shape {tuple(outputs[i].shape[1:])} per sample: box rows then "
                        "class scores in [0, 1]", _detect_layout(outputs[i]))
    flat = [i for i in candidates if outputs[i].ndim == 2 and outputs[i].shape[1] > 1]
    for i in flat:
        norms = np.linalg.norm(outputs[i].astype(np.float64), axis=1)
        if outputs[i].shape[1] >= 16 and np.allclose(norms, 1.0, atol=1e-3):
            return Task("embed", i, True, f"{outputs[i].shape[1]} features per sample, each row of unit length")
    if flat:
        i, why = _scores_output(flat, outputs, names, labels)
        return Task("classify", i, True, why)
    for i in candidates:
        out = outputs[i]
        if out.ndim == 4 and min(out.shape[1], out.shape[3]) > 1 and max(out.shape[1:]) >= 8:
            return Task("segment", i, True, f"per-pixel scores {tuple(out.shape[1:])}")
    return Task("raw", None, True, "no output looks like class scores, a detection head or a score map")


def measure_task(task: Task, options: TaskOptions, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                 labels: np.ndarray | None, state: dict[str, Any]) -> TaskMetric | None:
    """The task metric of ``candidate`` against ``reference``; ``state`` caches the reference's decode."""
    if task.output is None:
        return None
    ref, cand = reference[task.output], candidate[task.output]
    floor = options.min_task if options.min_task is not None else DEFAULT_FLOORS.get(task.name)
    if task.name == "classify":
        return _classify(ref, cand, labels, options.min_task)
    if task.name == "detect":
        low = replace(options, score_threshold=max(options.score_threshold - SCORE_MARGIN, 0.01))
        if "boxes" not in state:
            state["boxes"] = decode_all(ref, task.layout, low)
        return _detect(state["boxes"], decode_all(cand, task.layout, low), floor, options)
    if task.name == "segment":
        axis = 1 if ref.shape[1] <= ref.shape[3] else 3
        same = float(np.mean(ref.argmax(axis=axis) == cand.argmax(axis=axis)))
        return TaskMetric("segment", "pixel agreement", same, floor)
    if task.name == "embed":
        if "neighbours" not in state:
            state["neighbours"] = _neighbours(ref)
        same = float(np.mean(state["neighbours"] == _neighbours(cand)))
        r, c = ref.reshape(len(ref), -1).astype(np.float64), cand.reshape(len(cand), -1).astype(np.float64)
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
        cos = np.sum(r * c, axis=1) / np.where(norms == 0, 1.0, norms)
        return TaskMetric("embed", "embedding cosine (min)", float(cos.min()), floor,
                          {"cosine_mean": float(cos.mean()), "neighbour_agreement": same})
    return None


def _classify(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None, floor: float | None) -> TaskMetric:
    ref_top = ref.argmax(axis=1)
    top1 = float(np.mean(ref_top == cand.argmax(axis=1)))
    details: dict[str, Any] = {}
    if ref.shape[1] > 5:
        top5 = np.argpartition(-cand, 5, axis=1)[:, :5]
        details["top5_agreement"] = float(np.mean((top5 == ref_top[:, None]).any(axis=1)))
    if labels is not None:
        details["accuracy"] = float(np.mean(cand.argmax(axis=1) == labels))
    return TaskMetric("classify", "top-1 agreement", top1, floor, details)


def _detect(ref: list[np.ndarray], cand: list[np.ndarray], floor: float | None, options: TaskOptions) -> TaskMetric:
    """Recall of the original's detections (score ≥ threshold) among the artifact's, and the reverse.

    Both sides are decoded down to ``threshold - SCORE_MARGIN``: a detection at 0.252 that the
    artifact scores 0.248 is found (its score error is counted), not lost to the hard threshold.
    """
    thr = options.score_threshold
    total = matched = found = kept = 0
    errors: list[float] = []
    for r, c in zip(ref, cand):
        strong_r, strong_c = r[r[:, 4] >= thr], c[c[:, 4] >= thr]
        m, e = match(strong_r, c)
        total, matched, errors = total + len(strong_r), matched + m, errors + e
        k, _ = match(strong_c, r)
        found, kept = found + len(strong_c), kept + k
    # No detection in the original: nothing to lose, but detections out of nothing are not kept.
    recall = matched / total if total else (1.0 if found == 0 else 0.0)
    details = {"reference_detections": total, "artifact_detections": found, "matched": matched,
               "precision": kept / found if found else (1.0 if total == 0 else 0.0),
               "score_error": float(np.mean(errors)) if errors else None,
               "max_score_error": options.max_score_error,
               "score_threshold": thr, "nms_iou": options.iou}
    return TaskMetric("detect", "detection recall", recall, floor, details)


def _neighbours(emb: np.ndarray) -> np.ndarray:
    """Each sample's nearest other sample by cosine (embedding retrieval)."""
    x = emb.reshape(len(emb), -1).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)
