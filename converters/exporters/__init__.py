"""The one table of exporters, keyed by (model kind, format): which tool takes which model to which format.

A format's converter (:mod:`edgec.converters.onnx`, :mod:`edgec.converters.tflite`) quantizes
and reads artifacts of its format and never asks where a model came from; the route for a
model's kind brings the exporter, and a framework's own quantizer where it has one
(TFLiteConverter's for Keras), tried before the format's.

Example:
    >>> from edgec.converters.exporters import reaches
    >>> reaches("onnx", "tflite")
    False
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConversionError
from ..base import Converter, Recipe, Samples, Source, Target

KINDS = {"torch": "a PyTorch model", "onnx": "an ONNX model", "keras": "a Keras/TensorFlow model",
         "qat": "a quantization-aware trained PyTorch model"}


@dataclass(frozen=True)
class Route:
    """One (model kind, format) pair edgec converts, and with what.

    Attributes:
        export: ``module:function(source, path)`` writing the artifact (fp32, or int8 for ``qat``).
        quantize: ``module:function(fp32, out, *, recipe, ...)`` of the source's own framework, tried before
            the format's quantizer; it returns ``None`` for a recipe it does not make.
    """

    kind: str
    format: str
    export: str
    quantize: str | None = None


_HERE = __name__
ROUTES: dict[tuple[str, str], Route] = {(r.kind, r.format): r for r in (
    Route("torch", "onnx", f"{_HERE}.from_torch:to_onnx"),
    Route("torch", "tflite", f"{_HERE}.from_torch:to_tflite"),
    Route("qat", "onnx", f"{_HERE}.from_torch:qat_to_onnx"),
    Route("qat", "tflite", f"{_HERE}.from_torch:qat_to_tflite"),
    Route("onnx", "onnx", f"{_HERE}.from_onnx:to_onnx"),
    Route("keras", "onnx", f"{_HERE}.from_keras:to_onnx"),
    Route("keras", "tflite", f"{_HERE}.from_keras:to_tflite", quantize=f"{_HERE}.from_keras:quantize_tflite"),
)}


def reaches(kind: str, fmt: str) -> bool:
    """Whether a model of ``kind`` converts to ``fmt``."""
    return (kind, fmt) in ROUTES


def route(kind: str, fmt: str) -> Route:
    """The route from ``kind`` to ``fmt``.

    Raises:
        ConversionError: No exporter takes that kind to that format; the message says what does.
    """
    found = ROUTES.get((kind, fmt))
    if found is None:
        others = [f for k, f in ROUTES if k == kind]
        raise ConversionError(f"{fmt} export does not take {KINDS.get(kind, kind)}: convert it to "
                              f"{' or '.join(others) or 'another format'} (--format), or export the original model "
                              "to .pt2 or .keras")
    return found


def _function(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


class Routed:
    """A format's converter with the exporter (and any own quantizer) of one model kind: a :class:`Converter`."""

    def __init__(self, converter: Converter, route: Route) -> None:
        self.base, self.route, self.format = converter, route, converter.format

    def export(self, source: Source, path: Path) -> dict[str, Any] | None:
        return _function(self.route.export)(source, path)

    def quantize(self, fp32: Path, out: Path, *, recipe: Recipe, source: Source, calib: Samples | None,
                 profile: Target) -> dict[str, object]:
        if self.route.quantize is not None:
            done = _function(self.route.quantize)(fp32, out, recipe=recipe, source=source, calib=calib,
                                                  profile=profile)
            if done is not None:
                return done
        return self.base.quantize(fp32, out, recipe=recipe, source=source, calib=calib, profile=profile)

    def __getattr__(self, name: str) -> Any:  # layers, io_specs, layer_errors: the format's own
        return getattr(self.base, name)
