"""What a policy search tried and found: one :class:`Candidate` per recipe, and the :class:`SearchResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...converters.base import Layer, Recipe
from ..verify.artifact import Measured
from ..verify.board import BoardTiming
from .budget import Budget, drop_points


@dataclass
class Candidate:
    """One recipe the search tried (or skipped), and what it found."""

    recipe: Recipe
    status: str = "skipped"  # shipped | within budget | over budget | slower | too large | failed | skipped
    reason: str = ""
    measured: Measured | None = None
    float_layers: tuple[str, ...] = ()
    seconds: float = 0.0
    done: dict[str, object] = field(default_factory=dict)
    board: BoardTiming | None = None  # as the board measured it (--measure-on)

    def to_dict(self, fp32: Measured | None, reference_accuracy: float | None) -> dict[str, Any]:
        m = self.measured
        row: dict[str, Any] = {
            "label": self.recipe.label(), "precision": self.recipe.precision, "recipe": self.recipe.to_dict(),
            "float_layers": list(self.float_layers), "status": self.status, "reason": self.reason,
            "seconds": round(self.seconds, 2),
        }
        if m is not None:
            row.update(
                size_bytes=m.size_bytes,
                size_vs_fp32=m.size_bytes / fp32.size_bytes if fp32 else None,
                latency=m.latency.to_dict() if m.latency else None,
                speedup_vs_fp32=m.speedup,
                fidelity=m.fidelity.to_dict(),
                accuracy=m.fidelity.accuracy,
                drop_points=drop_points(reference_accuracy, m.fidelity.accuracy),
            )
        if self.board is not None:
            row["board"] = self.board.to_dict()
        return row


@dataclass(frozen=True)
class LayerSensitivity:
    """The output error when one layer alone is quantized."""

    layer: Layer
    # Measured alone: the worst of 1 - mean cosine (worst output), 1 - worst channel cosine, 1 - task metric.
    # From one run (cosine_min None): noise over signal power of the layer's quantized inputs.
    error: float
    cosine_min: float | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.layer.name, "display": self.layer.display, "op": self.layer.op,
                "params": self.layer.params, "error": self.error, "cosine_min": self.cosine_min,
                "accuracy": self.accuracy}


@dataclass
class SearchResult:
    """What the search shipped and everything it tried."""

    recipe: Recipe
    path: Path
    done: dict[str, object]
    candidates: list[Candidate]
    budget: Budget
    fp32: Measured
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    sensitivity_of: str | None = None
    speed_rule: str = ""
    cut_short: str | None = None  # what the time budget left untried
    board: dict[str, Any] | None = None  # the board that timed the candidates (--measure-on)

    def report(self, reference_accuracy: float | None) -> dict[str, Any]:
        return {
            "budget": self.budget.describe(),
            "shipped": self.recipe.label(),
            "speed_rule": self.speed_rule,
            "candidates": [c.to_dict(self.fp32, reference_accuracy) for c in self.candidates],
            "sensitivity": {"recipe": self.sensitivity_of, "layers": [s.to_dict() for s in self.sensitivity]},
            "cut_short": self.cut_short,
            "board": self.board,
        }
