"""The one table of formats edgec writes and serves.

Every part reads this table and nothing else: the CLI's choices, option validation and
device-profile checks, the converters (which module builds a format, which recipes it can
make), the quantization search (what each format's quantizer can do) and the runtime (which
backend opens a bundle). It imports nothing but the errors, so the runtime can read it on a
board.

Example:
    >>> from edgec.formats import get_format
    >>> get_format("tflite").suffix
    '.tflite'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
MODES: tuple[str, ...] = ("static", "dynamic", "weight-only")
CALIBRATIONS: tuple[str, ...] = ("minmax", "percentile", "entropy")
# How static int8 is written: QDQ (Quantize/DequantizeLinear around float ops: what TensorRT
# and onnxruntime's graph optimizer fuse) or QOperator (QLinearConv, QLinearMatMul...: u8
# activations, s8 weights, onnxruntime's own integer kernels; often faster on x86 CPUs).
LAYOUTS: tuple[str, ...] = ("qdq", "qoperator")


@dataclass(frozen=True)
class Format:
    """One target format.

    Attributes:
        name: The name users type (``--format onnx``).
        suffix: The model file's suffix inside a bundle.
        precisions: Precisions its converter can produce.
        converter: Module implementing :class:`~edgec.converters.base.Converter` (as ``CONVERTER``).
        backend: Runtime module that opens the format on a board (as ``open_backend``).
        modes: int8 modes its quantizer makes (``static``, ``dynamic``, ``weight-only``).
        calibrations: Static int8 calibration methods its quantizer has.
        smoothing: Whether SmoothQuant-style smoothing can precede dynamic int8.
        layouts: Static int8 graph layouts its quantizer writes (the first is the default).
        dynamic_ops: The only layer types dynamic int8 quantizes (``None``: every weight layer).
        batch_of_one: Exported models take a batch of 1 (the runtime serves larger ones row by row).
        platform: The platform name the Open Inference Protocol's model metadata gives.
        extra: The pip extra that brings its converter's dependencies.
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    converter: str
    backend: str
    modes: tuple[str, ...]
    calibrations: tuple[str, ...]
    smoothing: bool = False
    layouts: tuple[str, ...] = ("qdq",)
    dynamic_ops: tuple[str, ...] | None = None
    batch_of_one: bool = False
    platform: str = ""
    extra: str = "sdk"


FORMATS: dict[str, Format] = {
    "onnx": Format(
        "onnx", ".onnx", PRECISIONS, "edgec.converters.onnx", "edgec.runtime.bundle.backends.onnx",
        modes=("static", "dynamic"), calibrations=CALIBRATIONS, smoothing=True, layouts=LAYOUTS,
        # onnxruntime has integer kernels at run time for these only (MatMulInteger, int8 Gather).
        dynamic_ops=("MatMul", "Gather", "Attention", "LSTM"), platform="onnxruntime_onnx",
    ),
    "tflite": Format(
        "tflite", ".tflite", PRECISIONS, "edgec.converters.tflite", "edgec.runtime.bundle.backends.tflite",
        # ai-edge-quantizer calibrates by min/max; histogram methods are onnxruntime's.
        modes=MODES, calibrations=("minmax",), batch_of_one=True, platform="tensorflow_lite",
    ),
}


def get_format(name: str) -> Format:
    """Return the format called ``name``.

    Raises:
        ValidationError: No such format; the message lists the valid ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise ValidationError(f"unknown format {name!r}: choose one of {', '.join(FORMATS)}") from None


def format_of(path: str | Path) -> Format | None:
    """The format whose model files end like ``path``, if any."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if f.suffix == suffix), None)


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one edgec knows.

    Raises:
        ValidationError: Unknown precision; the message lists the valid ones.
    """
    if precision not in PRECISIONS:
        raise ValidationError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision
