"""What one conversion builds: the options (:class:`ConvertConfig`) resolved against a board (:class:`Target`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..converters import converter_for
from ..converters.base import Converter
from ..converters.exporters import KINDS, reaches
from ..devices import DeviceProfile, get_profile
from ..errors import ValidationError
from ..formats import FORMATS, Format, check_precision, get_format
from .bundle.writer import check_out_dir
from .load.data import ImageOptions
from .progress import Options
from .quantize.budget import Budget
from .verify.task import TaskOptions


@dataclass(frozen=True)
class ConvertConfig(Options):
    """What to build.

    Attributes:
        device: Device name, alias or ``.toml`` profile path.
        format: ``auto`` (the profile's), ``onnx`` or ``tflite``.
        precision: ``auto`` (search recipes from fastest to safest under the accuracy budget),
            ``fp32``, ``fp16`` or ``int8`` (plain static int8, checked only against sanity floors).
        out: Bundle folder; default ``build/<device>``.
        force: Replace ``out`` if it exists.
        weights: Weights for a ``pkg.module:factory`` model.
        input_shapes: ``1x3x224x224`` or ``name=1x3x224x224`` for models traced from code.
        image: How to read an image folder given as sample data.
        holdout: Share of the samples held out from calibration for verification.
        max_drop: With ``precision="auto"`` and labels: top-1 accuracy drop allowed, in points
            (default 1.0).
        min_cosine: Per-sample cosine floor against the original. With ``precision="auto"`` it
            is the budget (default 0.99 without labels); otherwise a sanity floor by precision.
        min_top1: Top-1 agreement floor for classifiers; default by precision.
        task: The model's task and how to judge it on that task (see :class:`TaskOptions`).
        seed: Seed of the calibration/held-out split and synthetic inputs.
        latency_budget_s: Time spent timing each model.
        time_budget_s: How long ``--precision auto`` may search: past it no new candidate is built
            (fp32 is always there) and the report says what was left untried; 0 for no limit.
        measure_on: An ``edgec serve`` board (``http://pi-lab:8080``, ``[measure] enabled = true``) to time
            fp32 and every candidate within budget on; the search ships by its numbers.
        measure_token: That board's ``admin_token``.

    Example:
        >>> ConvertConfig(device="rpi4", precision="int8", out=Path("build/rpi4"))
    """

    device: str = "x86-64"
    format: str = "auto"
    precision: str = "auto"
    out: Path | None = None
    force: bool = False
    weights: Path | None = None
    input_shapes: tuple[str, ...] = ()
    image: ImageOptions = field(default_factory=ImageOptions)
    holdout: float = 0.2
    max_drop: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    task: TaskOptions = field(default_factory=TaskOptions)
    seed: int = 0
    latency_budget_s: float = 1.0
    time_budget_s: float = 600.0
    measure_on: str | None = None
    measure_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.format != "auto":
            get_format(self.format)
        if self.precision != "auto":
            check_precision(self.precision)
        if not 0.0 < self.holdout < 1.0:
            raise ValidationError(f"holdout must be between 0 and 1, got {self.holdout}")
        Budget(self.max_drop, self.min_cosine)  # range checks
        if self.max_drop is not None and self.precision != "auto":
            raise ValidationError("--max-drop is the budget of --precision auto; drop --precision or --max-drop")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise ValidationError(f"min_top1 must be between 0 and 1, got {self.min_top1}")
        if self.latency_budget_s <= 0:
            raise ValidationError("latency_budget_s must be positive")
        if not self.time_budget_s >= 0:
            raise ValidationError(f"--time-budget {self.time_budget_s} must be seconds, 0 or more (0: no limit)")
        if self.measure_on and not self.measure_token:
            raise ValidationError("--measure-on needs the board's admin_token: pass --token or set EDGEC_ADMIN_TOKEN")

    def _coerce(self, name: str, value: Any) -> Any:
        if name == "task" and isinstance(value, dict):
            return TaskOptions(**value)
        if name == "task" and isinstance(value, str):
            return TaskOptions(task=value)
        return value


@dataclass(frozen=True)
class Target:
    """What one conversion builds, and for which board."""

    profile: DeviceProfile
    format: Format
    precision: str  # "auto" or the precision asked for
    reason: str
    out: Path
    format_reason: str = "asked for with --format"
    kind: str | None = None  # the model's (torch, onnx, keras): which exporter takes it there

    @property
    def converter(self) -> Converter:
        """The format's converter, with the exporter for the model's kind (:mod:`edgec.converters.exporters`)."""
        return converter_for(self.format, self.kind)

    @property
    def threads(self) -> int:
        """The board's thread count, at most this host's cores (latencies are measured here)."""
        return max(1, min(self.profile.threads, os.cpu_count() or 1))

    def precisions(self) -> list[str]:
        """Precisions the board runs and the format makes, fastest first."""
        return [p for p in ("int8", "fp16", "fp32")
                if p in self.profile.allowed_precisions and p in self.format.precisions]


def pick_format(profile: DeviceProfile, fmt: str, kind: str | None) -> tuple[str, str]:
    """The format to build for ``profile`` from a model of ``kind``, and why.

    Raises:
        ValidationError: The format asked for, or every format the board runs, is out of the model's reach.
    """
    what = KINDS.get(kind or "", "this model")
    if fmt != "auto":
        fmt = get_format(fmt).name
        if kind is not None and not reaches(kind, fmt):
            runs = [f for f in profile.formats if reaches(kind, f)]
            raise ValidationError(f"--format {fmt}: {what} cannot be converted to {fmt}"
                                  + (f"; use --format {runs[0]} ({profile.name} runs it)" if runs else
                                     " (export the original to .pt2 or .keras)"))
        return fmt, "asked for with --format"
    reachable = [f for f in profile.formats if kind is None or reaches(kind, f)]
    if not reachable:
        raise ValidationError(f"{profile.name} runs only {' or '.join(profile.formats)} models, and {what} cannot be "
                              f"converted to {profile.formats[0]}: convert the original PyTorch (.pt2) or Keras model")
    if reachable[0] == profile.format:
        return profile.format, f"{profile.name}'s preferred format"
    return reachable[0], (f"{profile.name} prefers {profile.format}, which {what} cannot be converted to; "
                          f"{reachable[0]} runs there too")


def resolve_target(profile: DeviceProfile, fmt: str, precision: str) -> tuple[str, str, str]:
    """Pick the precision for ``profile`` in format ``fmt`` (``auto``: the profile's); return the format,
    the precision and the reason for the precision.

    Raises:
        ValidationError: The device cannot run that precision, or the format cannot make it.
    """
    fmt = profile.format if fmt == "auto" else get_format(fmt).name
    if precision == "auto":
        choices = [p for p in ("int8", "fp16", "fp32") if p in profile.allowed_precisions and p in FORMATS[fmt].precisions]
        return fmt, "auto", f"the fastest candidate within the accuracy budget among {', '.join(choices)}"
    precision = check_precision(precision)
    if precision not in profile.allowed_precisions:
        raise ValidationError(
            f"{profile.name} cannot run {precision} models (it runs {', '.join(profile.allowed_precisions)}): "
            f"use --precision {profile.precision}"
        )
    if precision not in FORMATS[fmt].precisions:
        raise ValidationError(f"format {fmt} cannot produce {precision}")
    return fmt, precision, "asked for with --precision"


def plan(cfg: ConvertConfig, profile: DeviceProfile | None = None, kind: str | None = None) -> Target:
    """The board, format and precision to build for a model of ``kind`` (``torch``, ``onnx``, ``keras``;
    ``None``: any), and a free output folder.

    Raises:
        DeviceNotFoundError, ValidationError: An unknown device, a format the model cannot reach, or a
            precision the device cannot run.
        BundleError: ``out`` is in the way.
    """
    profile = profile or get_profile(cfg.device)
    fmt, format_reason = pick_format(profile, cfg.format, kind)
    fmt, precision, reason = resolve_target(profile, fmt, cfg.precision)
    out = Path(cfg.out or Path("build") / profile.name)
    check_out_dir(out, force=cfg.force)
    return Target(profile, FORMATS[fmt], precision, reason, out, format_reason, kind)
