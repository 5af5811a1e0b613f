"""Per-layer int8 sensitivity: quantize each layer alone and measure the output error it adds.

The search uses the ranking to pick the layers mixed precision keeps in float; ``edgec
analyze`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...converters.base import Layer, Recipe
from ..verify.artifact import MeasureFn
from .results import LayerSensitivity

# Held-out samples used per layer in a sensitivity analysis.
SENSITIVITY_SAMPLES = 64


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
) -> list[LayerSensitivity]:
    """Quantize each layer alone with ``recipe`` and measure the output error; most harmful first."""
    found = []
    path = work / f"sensitivity{fp32.suffix}"
    for i, layer in enumerate(layers):
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
