"""Knowledge distillation: soft targets from one or more teachers, and feature matching on
named layers (with a learned adapter where the widths differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import ValidationError
from .prune import resolve_layers


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


class Distiller:
    """The loss ``alpha * T² * KL(student/T || mean teacher/T) + (1 - alpha) * CE(labels)
    + beta * Σ MSE(adapter(student feature), teacher feature)``.

    Args:
        student: The model being trained.
        teachers: Frozen models; their softened probabilities are averaged.
        temperature: Softening temperature ``T``.
        alpha: Weight of the distillation term against the label loss.
        features: ``{student layer: teacher layer}`` pairs to match (first teacher);
            e.g. ``{"features.3": "features.3"}``.
        beta: Weight of the feature term.

    Raises:
        ValidationError: Bad temperature/alpha, an unknown layer name, or teachers whose
            outputs do not match the student's.
    """

    def __init__(self, student: Any, teachers: Sequence[Any], example: tuple[Any, ...], *,
                 temperature: float = 4.0, alpha: float = 0.7, features: dict[str, str] | None = None,
                 beta: float = 1.0) -> None:
        import torch

        if temperature <= 0:
            raise ValidationError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValidationError(f"alpha must be between 0 and 1, got {alpha}")
        if not teachers:
            raise ValidationError("distillation needs at least one teacher")
        self.student, self.teachers = student, list(teachers)
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        for t in self.teachers:
            t.eval()
            for p in t.parameters():
                p.requires_grad_(False)
        self._student_feats: dict[str, Any] = {}
        self._teacher_feats: dict[str, Any] = {}
        self.features = dict(features or {})
        s_mods = resolve_layers(student, list(self.features), "feature layer (student)")
        t_mods = resolve_layers(self.teachers[0], list(self.features.values()), "feature layer (teacher)")
        self._hooks = [m.register_forward_hook(self._keep(self._student_feats, n)) for n, m in zip(self.features, s_mods)]
        self._hooks += [m.register_forward_hook(self._keep(self._teacher_feats, n))
                        for n, m in zip(self.features, t_mods)]
        with torch.no_grad():
            s_out = _first(student.eval()(*example))
            for i, t in enumerate(self.teachers):
                t_out = _first(t(*example))
                if tuple(t_out.shape) != tuple(s_out.shape):
                    raise ValidationError(
                        f"teacher {i + 1} outputs {list(t_out.shape)} but the student outputs {list(s_out.shape)} "
                        "for the same input: distillation needs the same classes in the same order"
                    )
        self.adapters = torch.nn.ModuleDict()
        for name in self.features:
            s, t = self._student_feats[name], self._teacher_feats[name]
            if s.shape[2:] != t.shape[2:]:
                raise ValidationError(f"feature {name}: student {list(s.shape)} and teacher {list(t.shape)} differ "
                                      "beyond the channel axis; pick layers at the same resolution")
            key = name.replace(".", "_")
            if s.shape[1] == t.shape[1]:
                self.adapters[key] = torch.nn.Identity()
            elif s.dim() == 4:
                self.adapters[key] = torch.nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
            else:
                self.adapters[key] = torch.nn.Linear(s.shape[1], t.shape[1], bias=False)

    @staticmethod
    def _keep(store: dict[str, Any], name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[name] = _first(output)
        return hook

    def parameters(self) -> list[Any]:
        """The adapters' parameters (train them with the student's)."""
        return list(self.adapters.parameters())

    def loss(self, outputs: Any, labels: Any, inputs: tuple[Any, ...]) -> Any:
        import torch
        import torch.nn.functional as F

        logits = _first(outputs)
        with torch.no_grad():
            soft = torch.stack([F.softmax(_first(t(*inputs)) / self.temperature, dim=-1) for t in self.teachers]).mean(0)
        T = self.temperature
        kd = F.kl_div(F.log_softmax(logits / T, dim=-1), soft, reduction="batchmean") * T * T
        total = self.alpha * kd + (1 - self.alpha) * F.cross_entropy(logits, labels)
        for name in self.features:
            adapted = self.adapters[name.replace(".", "_")](self._student_feats[name])
            total = total + self.beta * F.mse_loss(adapted, self._teacher_feats[name])
        return total

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
