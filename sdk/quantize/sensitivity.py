"""Per-layer int8 sensitivity: which layers int8 hurts most.

Two ways, the same ranking's purpose (the layers mixed precision keeps in float):

- :func:`one_run`, for the search: the recipe's artifact is built once and run once on
  calibration samples with every quantized tensor as an extra output; a layer's score is the
  noise over signal power int8 puts on its weights and input activations (the converter's
  ``layer_errors``; ONNX QDQ models have it, as in onnxruntime's QDQ debugging tools).
- :func:`sensitivity`, for ``edgec analyze`` and converters without ``layer_errors``: each layer
  quantized alone and the model's outputs measured, one quantization and one measurement per
  layer; it stops at ``deadline`` and ranks what it measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...converters.base import Layer, Recipe
from ..verify.artifact import MeasureFn
from .results import LayerSensitivity

# Held-out samples used per layer in a sensitivity analysis.
SENSITIVITY_SAMPLES = 64
# Calibration samples the one-run ranking runs.
ONE_RUN_SAMPLES = 32


def one_run(converter: Any, fp32: Path, work: Path, recipe: Recipe, layers: Sequence[Layer], *, source: Any,
            calib: Any, profile: Any, threads: int = 1) -> list[LayerSensitivity] | None:
    """Rank ``layers`` from one build and one run of ``recipe`` (noise over signal of each layer's quantized
    inputs), most harmful first; ``None`` when the converter cannot (no ``layer_errors``, or a recipe
    without quantize/dequantize pairs, as dynamic int8)."""
    if not hasattr(converter, "layer_errors") or calib is None or not len(calib):
        return None
    path = work / f"sensitivity{fp32.suffix}"
    try:
        converter.quantize(fp32, path, recipe=replace(recipe, keep_float=()), source=source, calib=calib,
                           profile=profile)
        errors = converter.layer_errors(fp32, path, layers, calib.take(slice(0, ONE_RUN_SAMPLES)), threads=threads)
    finally:
        path.unlink(missing_ok=True)
    if not errors:
        return None
    found = [LayerSensitivity(layer, errors.get(layer.name, 0.0), None, None) for layer in layers]
    return sorted(found, key=lambda s: s.error, reverse=True)


def sensitivity(
    converter: Any,
    fp32: Path,
    work: Path,
    recipe: Recipe,
    layers: Sequence[Layer],
    *,
    source: Any,
    calib: Any,
    profile: Any,
    measure: MeasureFn,
    progress: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
) -> list[LayerSensitivity]:
    """Quantize each layer alone with ``recipe`` and measure the output error; most harmful first.
    Past ``deadline`` (``time.monotonic()``) it stops and ranks the layers it measured."""
    found = []
    path = work / f"sensitivity{fp32.suffix}"
    for i, layer in enumerate(layers):
        if deadline is not None and time.monotonic() > deadline:
            break
        try:
            done = converter.quantize(fp32, path, recipe=replace(recipe, keep_float=(), only=(layer.name,)),
                                      source=source, calib=calib, profile=profile)
            m = measure(path, recipe.precision, limit=SENSITIVITY_SAMPLES, weight_bits=done.get("weight_bits"))
            found.append(LayerSensitivity(layer, m.fidelity.error, m.fidelity.cosine_min, m.fidelity.accuracy))
        finally:
            path.unlink(missing_ok=True)
        if progress:
            progress(i + 1, len(layers))
    return sorted(found, key=lambda s: s.error, reverse=True)
