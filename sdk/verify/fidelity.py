"""How closely an artifact's outputs follow the original's on the same held-out samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import VerificationError


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
        raise VerificationError(f"the artifact's outputs have shape {cand.shape[1:]} per sample, the original's "
                                f"{ref.shape[1:]}: the conversion changed the model's outputs")
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
