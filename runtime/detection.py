"""Detections out of a YOLO-family head, and how two detectors' detections are matched (the host verifying a
detector on its task, and a board watching its detections drift).

``[N, 4 + C, anchors]`` (or ``[N, anchors, 4 + C]``): box centre and size (xywh), then one
score per class. Decoded as the exporters' own post-processing does: the best class per
anchor, a score threshold, class-wise greedy NMS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Detections kept per image before and after NMS (bounds the decode on any head).
MAX_CANDIDATES = 3000
MAX_DETECTIONS = 300
MATCH_IOU = 0.5


def decode_all(out: np.ndarray, layout: str | None, options: Any) -> list[np.ndarray]:
    """Per image, the detections ``[K, 6]`` (x1, y1, x2, y2, score, class) after threshold and NMS."""
    rows = out if layout == "channels-first" else np.swapaxes(out, 1, 2)
    return [decode(r, options.score_threshold, options.iou) for r in rows]


def decode(rows: np.ndarray, threshold: float, iou: float) -> np.ndarray:
    """One image's YOLO head ``[4+C, A]`` (cx, cy, w, h, class scores) to detections after class-wise NMS."""
    rows = np.nan_to_num(rows.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scores = rows[4:].max(axis=0)
    classes = rows[4:].argmax(axis=0)
    keep = np.flatnonzero(scores >= threshold)
    if keep.size > MAX_CANDIDATES:
        keep = keep[np.argsort(-scores[keep])[:MAX_CANDIDATES]]
    cx, cy, w, h = rows[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kept = nms(boxes, scores[keep], classes[keep], iou)[:MAX_DETECTIONS]
    return np.concatenate([boxes[kept], scores[keep][kept, None], classes[keep][kept, None]], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy class-wise non-maximum suppression, best score first."""
    # Offsetting each class's boxes apart makes one pass class-wise (the common batched-NMS trick).
    span = float(np.abs(boxes).max()) + 1.0 if boxes.size else 1.0
    shifted = boxes + (classes.astype(np.float32) * 2 * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best = order[0]
        kept.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_matrix(shifted[best][None], shifted[rest])[0] <= iou]
    return np.asarray(kept, dtype=np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b`` (x1, y1, x2, y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:4] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:4] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(ref: np.ndarray, cand: np.ndarray) -> tuple[int, list[float]]:
    """Greedy matching of ``cand`` detections to ``ref`` ones (same class, IoU ≥ 0.5), best ref score first.

    Returns:
        The number of reference detections matched, and the |score difference| of each match.
    """
    if len(ref) == 0 or len(cand) == 0:
        return 0, []
    ious = iou_matrix(ref[:, :4], cand[:, :4])
    ious[ref[:, 5][:, None] != cand[:, 5][None, :]] = 0.0
    used = np.zeros(len(cand), dtype=bool)
    errors = []
    for i in np.argsort(-ref[:, 4], kind="stable"):
        row = np.where(used, 0.0, ious[i])
        j = int(row.argmax())
        if row[j] >= MATCH_IOU:
            used[j] = True
            errors.append(abs(float(ref[i, 4] - cand[j, 4])))
    return len(errors), errors
