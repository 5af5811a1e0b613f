"""``edgec analyze``: which layers break int8, measured one layer at a time.

Each layer whose weights int8 would quantize is quantized alone (everything else stays
float) and the artifact is run on held-out samples; the error it adds to the output
(1 − mean cosine to the original) ranks the layers. The policy search uses the same
ranking to pick the layers mixed precision keeps in float.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..converters.base import Recipe
from ..devices import get_profile
from ..errors import CalibrationError, ValidationError
from ..formats import get_format
from .bundle.writer import output, write_report
from .load.data import ImageOptions, split_samples
from .load.models import example_inputs, load_model, model_kind, precheck
from .plan import ConvertConfig, pick_format, plan
from .progress import SILENT, Options, Progress
from .quantize.results import LayerSensitivity
from .quantize.sensitivity import sensitivity
from .report.markdown import sensitivity_section
from .report.page import Report
from .report.plots import sensitivity_png
from .verify.artifact import make_measure, reference_outputs
from .verify.task import TaskOptions


@dataclass(frozen=True)
class AnalyzeConfig(Options):
    """What to analyze, and how.

    Attributes:
        device: Device name, alias or ``.toml`` profile path.
        format: ``auto`` (the profile's), ``onnx`` or ``tflite``.
        recipe: The int8 recipe each layer is quantized with; default static min-max, or dynamic
            when there is no data to calibrate on.
        force: Replace the output folder if it exists.
        weights, input_shapes, image, holdout, task, seed: As for :class:`~edgec.sdk.plan.ConvertConfig`.
    """

    device: str = "x86-64"
    format: str = "auto"
    recipe: Recipe | None = None
    force: bool = False
    weights: Path | None = None
    input_shapes: tuple[str, ...] = ()
    image: ImageOptions = field(default_factory=ImageOptions)
    holdout: float = 0.2
    task: TaskOptions = field(default_factory=TaskOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        self.convert_config()  # the fields they share, checked as convert checks them

    def convert_config(self, out: Path | None = None) -> ConvertConfig:
        """The same model, board and data options as a :class:`ConvertConfig`."""
        return ConvertConfig(device=self.device, format=self.format, out=out, force=self.force, weights=self.weights,
                             input_shapes=self.input_shapes, image=self.image, holdout=self.holdout, task=self.task,
                             seed=self.seed)

    def _coerce(self, name: str, value: Any) -> Any:
        return ConvertConfig()._coerce(name, value)


@dataclass(frozen=True)
class Analysis:
    """A written sensitivity analysis.

    Attributes:
        out: The folder holding ``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png``.
        recipe: The int8 recipe each layer was quantized with.
        layers: Layers, most harmful first.
        warnings: Things worth knowing about the data.
    """

    out: Path
    recipe: Recipe
    layers: list[LayerSensitivity]
    warnings: list[str]


def analyze(model: Any, config: AnalyzeConfig | None = None, *, calib: Any = None, eval_data: Any = None,
            out: str | Path | None = None, progress: Progress | None = None, **options: Any) -> Analysis:
    """Rank the layers of ``model`` by the output error int8 adds when each alone is quantized.

    Args:
        model: As for :func:`edgec.convert`.
        config: What to analyze; ``options`` (any :class:`AnalyzeConfig` field) override it.
        calib: Calibration samples (needed for static int8; without ``eval_data`` a share is held out).
        eval_data: Held-out samples to measure on.
        out: Folder to write; default ``build/analyze-<device>``.
        progress: Where stages and layers done are reported; default silent.

    Raises:
        CalibrationError: No sample data to measure on.
        ValidationError: A recipe the format cannot make.

    Example:
        >>> analysis = analyze("model.pt2", AnalyzeConfig(device="rpi4"), calib="calib.npz")
        >>> analysis.layers[0].layer.display
        'features.0'
    """
    cfg = (config or AnalyzeConfig()).with_options(options)
    progress = progress or SILENT
    step = progress.stage
    precheck(model)
    if calib is None and eval_data is None:
        raise CalibrationError("analyze measures each layer on real inputs: pass --calib data.npz (and --eval)")
    profile = get_profile(cfg.device)
    fmt = get_format(pick_format(profile, cfg.format, model_kind(model))[0])
    recipe = cfg.recipe or Recipe("int8", "static" if calib is not None else "dynamic")
    if recipe.mode not in fmt.modes or recipe.calibration not in fmt.calibrations:
        raise ValidationError(f"{fmt.name} cannot make {recipe.label()}: modes {', '.join(fmt.modes)}, "
                              f"calibrations {', '.join(fmt.calibrations)}")
    if recipe.needs_calibration and calib is None:
        raise CalibrationError(f"{recipe.label()} needs calibration data: pass --calib")
    target = plan(cfg.convert_config(Path(out or Path("build") / f"analyze-{profile.name}")), profile, model_kind(model))
    converter = target.converter
    with step("Loading model"):
        source = load_model(model, weights=cfg.weights,
                            example=lambda: example_inputs(calib if calib is not None else eval_data, cfg.input_shapes))
    with step("Checking sample data"):
        data = split_samples(calib, eval_data, source.inputs, quantized=True, holdout=cfg.holdout, seed=cfg.seed,
                             image=cfg.image)
    holdout = data.holdout
    with output(target.out, force=cfg.force) as stage, tempfile.TemporaryDirectory(prefix="edgec-analyze-") as tmp:
        work = Path(tmp)
        fp32 = work / f"model.fp32{fmt.suffix}"
        with step(f"Exporting {fmt.name} fp32"):
            converter.export(source, fp32)
        with step("Running the original on held-out samples"):
            reference = reference_outputs(source, holdout, cfg.task)
        measure = make_measure(fmt.name, source, profile, target.threads, holdout, reference)
        layers = converter.layers(fp32)
        if not layers:
            raise ValidationError(f"the {fmt.name} model has no layers with weights for int8 to quantize")
        with step(f"Quantizing {len(layers)} layers one at a time ({recipe.label()})"):
            ranked = sensitivity(converter, fp32, work, recipe, layers, source=source, calib=data.calib,
                                 profile=profile, measure=measure,
                                 progress=lambda done, total: progress.advance(done, total, "layers"))
        rows = [s.to_dict() for s in ranked]
        title = f"{source.label} on {profile.name} ({fmt.name}, {recipe.label()})"
        report = Report(f"edgec sensitivity: {title}", {
            "model": source.label, "device": profile.name, "format": fmt.name, "recipe": recipe.to_dict(),
            "recipe_label": recipe.label(), "holdout_samples": len(holdout), "layers": rows})
        section = sensitivity_section(rows, recipe.label(), top=len(rows))
        write_report(stage, "sensitivity", report.add(section.title, [
            *section.lines, "", "![per-layer sensitivity](sensitivity.png)"]))
        sensitivity_png(rows, stage / "sensitivity.png", title)
    return Analysis(target.out.resolve(), recipe, ranked, data.warnings)
