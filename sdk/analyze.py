"""``edgec analyze``: which layers break int8, measured one layer at a time.

Each layer whose weights int8 would quantize is quantized alone (everything else stays
float) and the artifact is run on held-out samples; the error it adds to the output
(1 − mean cosine to the original) ranks the layers. The policy search uses the same
ranking to pick the layers mixed precision keeps in float.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..converters.base import Recipe
from ..devices import get_profile
from ..errors import CalibrationError, ValidationError
from ..formats import get_format
from .bundle.writer import publish, staging
from .load.data import example_inputs, split_samples
from .load.models import load_model, model_kind, precheck
from .plan import ConvertConfig, pick_format, plan
from .progress import Step, silent_step
from .quantize.results import LayerSensitivity
from .quantize.sensitivity import sensitivity
from .report.markdown import sensitivity_markdown
from .report.plots import sensitivity_png
from .verify.artifact import make_measure, reference_outputs


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


def analyze(
    model: Any,
    *,
    device: str = "x86-64",
    format: str = "auto",
    calib: Any = None,
    eval_data: Any = None,
    recipe: Recipe | None = None,
    out: str | Path | None = None,
    force: bool = False,
    step: Step | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Analysis:
    """Rank the layers of ``model`` by the output error int8 adds when each alone is quantized.

    Args:
        model: As for :func:`edgec.convert`.
        device: Device name, alias or profile ``.toml``.
        format: ``auto`` (the profile's), ``onnx`` or ``tflite``.
        calib: Calibration samples (needed for static int8; without ``eval_data`` a share is held out).
        eval_data: Held-out samples to measure on.
        recipe: The int8 recipe; default static min-max, or dynamic when there is no data to calibrate on.
        out: Folder to write; default ``build/analyze-<device>``.
        force: Replace ``out`` if it exists.
        step: Progress hook for stages; ``progress(done, total)`` for layers.
        options: Other :class:`~edgec.sdk.pipeline.ConvertConfig` fields (``weights``, ``seed``...).

    Raises:
        CalibrationError: No sample data to measure on.
        ValidationError: A recipe the format cannot make.
    """
    step = step or silent_step
    precheck(model)
    if calib is None and eval_data is None:
        raise CalibrationError("analyze measures each layer on real inputs: pass --calib data.npz (and --eval)")
    cfg = ConvertConfig(device=device, format=format).with_options(options)
    profile = get_profile(cfg.device)
    fmt = get_format(pick_format(profile, cfg.format, model_kind(model))[0])
    recipe = recipe or Recipe("int8", "static" if calib is not None else "dynamic")
    if recipe.mode not in fmt.modes or recipe.calibration not in fmt.calibrations:
        raise ValidationError(f"{fmt.name} cannot make {recipe.label()}: modes {', '.join(fmt.modes)}, "
                              f"calibrations {', '.join(fmt.calibrations)}")
    if recipe.needs_calibration and calib is None:
        raise CalibrationError(f"{recipe.label()} needs calibration data: pass --calib")
    target = plan(cfg.with_options({"out": out or Path("build") / f"analyze-{profile.name}", "force": force}), profile,
                  model_kind(model))
    converter = target.converter
    with step("Loading model"):
        source = load_model(model, weights=cfg.weights,
                            example=example_inputs(calib if calib is not None else eval_data, cfg.input_shapes))
    with step("Checking sample data"):
        data = split_samples(calib, eval_data, source.inputs, quantized=True, holdout=cfg.holdout, seed=cfg.seed,
                             image=cfg.image)
    holdout = data.holdout
    with staging(target.out) as stage, tempfile.TemporaryDirectory(prefix="edgec-analyze-") as tmp:
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
                                 profile=profile, measure=measure, progress=progress)
        rows = [s.to_dict() for s in ranked]
        title = f"{source.label} on {profile.name} ({fmt.name}, {recipe.label()})"
        (stage / "sensitivity.json").write_text(json.dumps(
            {"model": source.label, "device": profile.name, "format": fmt.name, "recipe": recipe.to_dict(),
             "recipe_label": recipe.label(), "holdout_samples": len(holdout), "layers": rows}, indent=2) + "\n")
        md = [f"# edgec sensitivity: {title}", *sensitivity_markdown(rows, recipe.label(), top=len(rows))]
        md += ["", "![per-layer sensitivity](sensitivity.png)", ""]
        (stage / "sensitivity.md").write_text("\n".join(md), encoding="utf-8")
        sensitivity_png(rows, stage / "sensitivity.png", title)
        published = publish(stage, target.out, force=force)
    return Analysis(published, recipe, ranked, data.warnings)
