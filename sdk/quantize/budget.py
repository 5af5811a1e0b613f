"""The accuracy budget a shipped model must stay within, and how a measurement is held against it."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ValidationError
from ..verify.fidelity import Fidelity

# Without labels, the budget is a cosine floor against the original, per sample of every
# output and per channel of every output.
DEFAULT_MIN_COSINE = 0.99
# With labels, it is a top-1 accuracy drop in points.
DEFAULT_MAX_DROP = 1.0


@dataclass(frozen=True)
class Budget:
    """How much the shipped model may differ from the original.

    Attributes:
        max_drop: Top-1 accuracy drop allowed, in points (needs labels).
        min_cosine: Lowest per-sample cosine similarity allowed to the original's outputs.
    """

    max_drop: float | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ValidationError(f"--max-drop is in points of top-1 accuracy (0-100), got {self.max_drop}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ValidationError(f"--min-cosine must be between -1 and 1, got {self.min_cosine}")

    @classmethod
    def resolve(cls, max_drop: float | None, min_cosine: float | None, labels: bool) -> Budget:
        """The budget asked for, or the default one for data with or without labels.

        Raises:
            ValidationError: ``max_drop`` without labels to measure accuracy with.
        """
        if max_drop is not None and not labels:
            raise ValidationError(
                "--max-drop needs labels: add a `labels` array to the --eval/--calib .npz, "
                "or set a fidelity floor with --min-cosine 0.99"
            )
        if max_drop is None and min_cosine is None:
            return cls(max_drop=DEFAULT_MAX_DROP) if labels else cls(min_cosine=DEFAULT_MIN_COSINE)
        return cls(max_drop=max_drop, min_cosine=min_cosine)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 drop ≤ {self.max_drop:g} pt")
        if self.min_cosine is not None:
            parts.append(f"cosine ≥ {self.min_cosine:g} on every held-out sample of every output and on every "
                         "channel")
        return " and ".join(parts)

    def check(self, fid: Fidelity, reference_accuracy: float | None) -> tuple[bool, list[str]]:
        """Whether ``fid`` is inside the budget, with one line per measured criterion."""
        ok, lines = True, []
        if self.max_drop is not None:
            drop = drop_points(reference_accuracy, fid.accuracy)
            if drop is None:
                raise ValidationError("an accuracy budget needs labels on the held-out samples")
            good = drop <= self.max_drop + 1e-9
            lines.append(f"top-1 drop {drop:.2f} pt {'≤' if good else '>'} {self.max_drop:g}")
            ok = ok and good
        if self.min_cosine is not None:
            good, cos_lines = cosine_checks(fid, self.min_cosine)
            lines += cos_lines
            ok = ok and good
        good, task_lines = task_checks(fid)
        return ok and good, lines + task_lines


def task_checks(fid: Fidelity) -> tuple[bool, list[str]]:
    """The task metric's floor and the detector's score error, where the task is known (and has a budget)."""
    return fid.task.check() if fid.task is not None else (True, [])


def cosine_checks(fid: Fidelity, floor: float) -> tuple[bool, list[str]]:
    """The cosine floor held against the worst output's worst sample and the worst channel."""
    where = fid.worst()
    good = fid.cosine_min >= floor
    lines = [f"cosine min {fid.cosine_min:.4f} {'≥' if good else '<'} {floor:g}"]
    channel_ok = fid.channel_cosine_min >= floor
    if fid.outputs and any(o.channels > 1 for o in fid.outputs):
        lines.append(f"worst channel cosine {fid.channel_cosine_min:.4f} {'≥' if channel_ok else '<'} {floor:g}")
    if where and not (good and channel_ok):
        lines[-1] += f" ({where})"
    return good and channel_ok, lines


def drop_points(reference: float | None, candidate: float | None) -> float | None:
    if reference is None or candidate is None:
        return None
    return 100.0 * (reference - candidate)
