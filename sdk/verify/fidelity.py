"""How closely an artifact's outputs follow the original's on the same held-out samples.

Every output is compared on its own, and within an output every channel along its feature
axis (the 4+C rows of a ``[N, 4+C, anchors]`` detection head, the classes of a score map): a
whole-output cosine is dominated by its largest values, so a row of class scores that
collapsed to 0 could hide behind box coordinates in the hundreds. The budget is held against
the worst output and the worst channel, and against the task metric (:mod:`.task`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import VerificationError
from .task import Task, TaskMetric, TaskOptions, measure_task, resolve_task

# A channel whose reference peak is below this share of its output's peak sits under a
# quarter of one int8 step of any per-tensor layout; it is reported as quiet, not budgeted
# (a real loss there shows in the task metric).
QUIET_CHANNEL = 1e-3


@dataclass(frozen=True)
class OutputFidelity:
    """One output of the artifact against the original's.

    Attributes:
        name: The output's name.
        channel_axis: The feature axis its channels were taken along (``None``: one channel).
        channels: Channels compared (quiet ones included).
        cosine_min, cosine_mean: Per-sample cosine similarity over this output.
        max_abs_error, mean_abs_error: Absolute differences over this output.
        worst_channel: Index of the channel with the lowest cosine (budgeted channels only).
        worst_channel_cosine: Its cosine over every sample and position.
        worst_channel_sqnr_db: Its signal-to-quantization-noise ratio, in dB.
        quiet_channels: Channels too small against the output's peak to budget.
    """

    name: str
    channel_axis: int | None
    channels: int
    cosine_min: float
    cosine_mean: float
    max_abs_error: float
    mean_abs_error: float
    worst_channel: int | None
    worst_channel_cosine: float
    worst_channel_sqnr_db: float
    quiet_channels: int = 0


@dataclass(frozen=True)
class Fidelity:
    """How closely one model's outputs follow another's on the same samples.

    Attributes:
        samples: Number of held-out samples compared.
        max_abs_error: Largest absolute difference over every output element.
        mean_abs_error: Mean absolute difference over every output element.
        cosine_min: Lowest per-sample cosine similarity of any output.
        cosine_mean: Mean per-sample cosine similarity of the worst output.
        channel_cosine_min: Lowest cosine of any budgeted channel of any output.
        top1_agreement: Share of samples whose arg-max class matches, on the class-score output.
        accuracy: Top-1 accuracy against labels, when labels were given.
        outputs: Each output on its own.
        task: The task metric, where the task is known.
    """

    samples: int
    max_abs_error: float
    mean_abs_error: float
    cosine_min: float
    cosine_mean: float
    channel_cosine_min: float = 1.0
    top1_agreement: float | None = None
    accuracy: float | None = None
    outputs: tuple[OutputFidelity, ...] = ()
    task: TaskMetric | None = None

    @property
    def error(self) -> float:
        """One number for ranking (sensitivity, closest miss): the worst of the output, channel and task losses."""
        losses = [1.0 - self.cosine_mean, 1.0 - self.channel_cosine_min]
        if self.task is not None:
            losses.append(1.0 - self.task.value)
        return max(losses)

    def worst(self) -> str:
        """Where the fidelity is lowest, in words."""
        if not self.outputs:
            return ""
        out = min(self.outputs, key=lambda o: min(o.cosine_min, o.worst_channel_cosine))
        where = f"output {out.name!r}"
        if out.worst_channel is not None and out.channels > 1 and out.worst_channel_cosine < out.cosine_min:
            where += f", channel {out.worst_channel} (axis {out.channel_axis})"
        return where

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["task"] = self.task.to_dict() if self.task is not None else None
        return data


def channel_axis(shape: Sequence[int]) -> int | None:
    """The feature axis of an output of ``shape`` (batch axis first), the way heads are laid out.

    ``[N, F]``: 1. ``[N, A, B]``: the much shorter of A and B (``[N, 4+C, anchors]`` -> 1,
    ``[N, anchors, 4+C]`` and ``[N, tokens, hidden]`` -> 2). ``[N, C, H, W]`` -> 1 and
    ``[N, H, W, C]`` -> 3 (the shorter of the two ends). Rank 5 and up: 1. A vector: none.
    """
    rank = len(shape)
    if rank <= 1:
        return None
    if rank == 2:
        return 1
    if rank == 3:
        return 1 if 4 * shape[1] < shape[2] else 2
    if rank == 4:
        return 1 if shape[1] <= shape[3] else 3
    return 1


class Reference:
    """The original's outputs on the held-out samples, and how artifacts are held against them.

    Args:
        outputs: The original's outputs, in the model's output order.
        names: The outputs' names.
        labels: Labels of the held-out samples, if any.
        options: The task and channel axes (see :class:`~.task.TaskOptions`).
    """

    def __init__(self, outputs: Sequence[np.ndarray], names: Sequence[str], labels: np.ndarray | None = None,
                 options: TaskOptions | None = None) -> None:
        if len(names) != len(outputs):
            names = [f"output{i}" for i in range(len(outputs))]
        self.outputs, self.names, self.labels = list(outputs), list(names), labels
        self.options = options or TaskOptions()
        self.task: Task = resolve_task(self.options, self.outputs, self.names, labels)
        given = self.options.axes({n: i for i, n in enumerate(self.names)})
        self.axes = []
        for i, out in enumerate(self.outputs):
            axis = given.get(i, given.get(-1, channel_axis(out.shape)))
            if axis is not None and not -out.ndim < axis < out.ndim:
                raise VerificationError(f"--channel-axis {axis} is not an axis of output {self.names[i]!r} "
                                        f"(shape {tuple(out.shape)})")
            self.axes.append(None if axis is None else axis % out.ndim)
        self._state: dict[str, Any] = {}
        # An embedding's features are no channels: it is judged per sample (cosine) and by its neighbours.
        self._embedding = self.task.output if self.task.name == "embed" else None

    def __len__(self) -> int:
        return int(self.outputs[0].shape[0])

    @property
    def scores(self) -> int | None:
        """The output holding class scores (classifiers), else ``None``."""
        return self.task.output if self.task.name == "classify" else None

    def accuracy(self) -> float | None:
        """The original's own top-1 accuracy on the labels."""
        if self.labels is None or self.scores is None:
            return None
        return float(np.mean(self.outputs[self.scores].argmax(axis=1) == self.labels))

    def head(self, n: int) -> Reference:
        """The same reference on its first ``n`` samples."""
        part = Reference.__new__(Reference)
        part.__dict__.update(self.__dict__)
        part.outputs = [o[:n] for o in self.outputs]
        part.labels = self.labels[:n] if self.labels is not None else None
        part._state = {}
        return part

    def compare(self, candidate: Sequence[np.ndarray]) -> Fidelity:
        """Hold ``candidate`` outputs (same samples, same order) against the original's."""
        if len(candidate) != len(self.outputs):
            raise VerificationError(f"the artifact has {len(candidate)} outputs, the original {len(self.outputs)}: "
                                    "the conversion changed the model's outputs")
        per = []
        total_abs, total_n, max_abs = 0.0, 0, 0.0
        for name, axis, ref, cand in zip(self.names, self.axes, self.outputs, candidate):
            if ref.shape != cand.shape:
                raise VerificationError(f"the artifact's output {name!r} has shape {tuple(cand.shape)}, the "
                                        f"original's {tuple(ref.shape)}: the conversion changed the model's outputs")
            out = _compare_output(name, axis, ref, cand)
            per.append(out)
            total_abs += out.mean_abs_error * ref.size
            total_n += ref.size
            max_abs = max(max_abs, out.max_abs_error)
        task = measure_task(self.task, self.options, self.outputs, candidate, self.labels, self._state)
        top1 = task.value if task is not None and task.task == "classify" else None
        acc = task.details.get("accuracy") if task is not None and task.task == "classify" else None
        worst = min(per, key=lambda o: o.cosine_mean)
        return Fidelity(
            samples=len(self),
            max_abs_error=max_abs,
            mean_abs_error=total_abs / max(total_n, 1),
            cosine_min=min(o.cosine_min for o in per),
            cosine_mean=worst.cosine_mean,
            channel_cosine_min=min((o.worst_channel_cosine for i, o in enumerate(per) if i != self._embedding),
                                   default=1.0),
            top1_agreement=top1,
            accuracy=acc,
            outputs=tuple(per),
            task=task,
        )


def _cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two 2-D arrays; two all-zero rows agree, one zero row does not."""
    dots = np.einsum("ij,ij->i", ref, cand)
    nr, nc = np.sqrt(np.einsum("ij,ij->i", ref, ref)), np.sqrt(np.einsum("ij,ij->i", cand, cand))
    norms = nr * nc
    cos = np.where(norms == 0, 0.0, dots / np.where(norms == 0, 1.0, norms))
    return np.where((nr == 0) & (nc == 0), 1.0, np.clip(cos, -1.0, 1.0))


def _compare_output(name: str, axis: int | None, ref: np.ndarray, cand: np.ndarray) -> OutputFidelity:
    n = ref.shape[0]
    r = np.nan_to_num(ref.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    c = cand.astype(np.float64)
    if not np.isfinite(c).all():  # inf or NaN out of an artifact is as wrong as it gets
        c = np.where(np.isfinite(c), c, np.where(np.isnan(c), 0.0, np.sign(c) * 1e30))
    diff = np.abs(r - c)
    per_sample = _cosines(r.reshape(n, -1), c.reshape(n, -1))
    if axis is None:
        rows_r, rows_c = r.reshape(1, -1), c.reshape(1, -1)
    else:
        rows_r = np.moveaxis(r, axis, 0).reshape(r.shape[axis], -1)
        rows_c = np.moveaxis(c, axis, 0).reshape(c.shape[axis], -1)
    channel_cos = _cosines(rows_r, rows_c)
    peaks = np.abs(rows_r).max(axis=1)
    loud = peaks >= QUIET_CHANNEL * peaks.max() if peaks.size and peaks.max() > 0 else np.ones(len(peaks), bool)
    worst = int(np.argmin(np.where(loud, channel_cos, np.inf)))
    signal = float(np.sum(rows_r[worst] ** 2))
    noise = float(np.sum((rows_r[worst] - rows_c[worst]) ** 2))
    sqnr = float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf"))
    return OutputFidelity(
        name=name, channel_axis=axis, channels=len(rows_r),
        cosine_min=float(per_sample.min()), cosine_mean=float(per_sample.mean()),
        max_abs_error=float(diff.max()) if diff.size else 0.0, mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        worst_channel=worst if axis is not None else None, worst_channel_cosine=float(channel_cos[worst]),
        worst_channel_sqnr_db=min(max(sqnr, -999.0), 999.0), quiet_channels=int((~loud).sum()))


def run_batched(fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]], batches: Any) -> list[np.ndarray]:
    """Run ``fn`` over batches and stack each output along the first axis."""
    parts = [fn(b) for b in batches]
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]

