"""The converter protocol every target format implements, what it is given, and the recipes it takes.

A converter sees the source model, the calibration samples and the target board only
through the small protocols here (:class:`Source`, :class:`Samples`, :class:`Target`): the
SDK's loaders and the device profiles satisfy them, and nothing here imports either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._quiet import quiet
from ..errors import ConversionError, EdgecError, ValidationError, first_line
from ..formats import CALIBRATIONS, LAYOUTS, MODES
from ..runtime.bundle.tensors import TensorSpec

# Calibration past this many samples costs time and rarely moves int8 ranges.
MAX_CALIBRATION_SAMPLES = 512
# Parts of one Concat whose largest |values| differ by more than this share no int8 scale in
# any format: at 16x the smaller part keeps under 4 of its 8 bits (a detector's scores beside
# its pixel boxes), so its quantizer keeps that Concat float.
RANGE_RATIO = 16.0


class Source(Protocol):
    """The original model (``edgec.sdk.load.models`` builds these)."""

    kind: str  # "torch" | "onnx" | "keras"
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Reference outputs for ``feeds`` keyed by input name."""
        ...


def example_feeds(source: Source, batch: int) -> list[np.ndarray]:
    """Zeros for each input to trace or export with: a dynamic batch of ``batch``, other dynamic sizes as
    the model was exported with (``source.examples``, from torch.export's hints), else 2."""
    shapes = getattr(source, "examples", None) or {}
    out = []
    for t in source.inputs:
        known = shapes.get(t.name, ())
        shape = [d if d is not None else (batch if i == 0 else (known[i] if i < len(known) else 2))
                 for i, d in enumerate(t.shape)]
        out.append(np.zeros(tuple(shape), dtype=t.dtype))
    return out


class Samples(Protocol):
    """Named arrays sharing a first (sample) axis (``edgec.sdk.load.data.SampleSet``)."""

    def __len__(self) -> int: ...

    def take(self, index: Any) -> Samples: ...

    def samples(self) -> Iterator[dict[str, np.ndarray]]: ...

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]: ...

    def batch_size(self, most: int) -> int:
        """Samples per batch: ``most`` for small samples, fewer for large ones, at least 1."""
        ...


class Target(Protocol):
    """What a converter needs to know of the board (a :class:`~edgec.devices.DeviceProfile` has it)."""

    name: str
    int8_io: bool
    int8_reduce_range: bool
    execution_providers: tuple[str, ...]


@contextlib.contextmanager
def converting(what: str) -> Iterator[None]:
    """Run an exporter or quantizer step quietly; a failure becomes one :class:`ConversionError`.

    The error carries the first line of the exception and the tail of what the tool
    printed meanwhile (which is where converters put the real reason).
    """
    captured = None
    try:
        with quiet() as captured:
            yield
    except EdgecError:
        raise
    except Exception as exc:
        tail = f"\n{captured.tail()}" if captured is not None and captured.text else ""
        raise ConversionError(f"{what} failed: {first_line(exc)}{tail}") from None


@dataclass(frozen=True)
class Recipe:
    """How to quantize one artifact.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8``.
        mode: For int8: ``static`` (int8 weights and activations, ranges calibrated on
            samples), ``dynamic`` (int8 weights, activations quantized at run time) or
            ``weight-only`` (int8 weights, float compute).
        calibration: For static int8: ``minmax``, ``percentile`` or ``entropy``.
        smoothing: SmoothQuant strength (0-1): moves activation outliers into the weights of
            the layers that read them before quantizing; ``None`` for none.
        keep_float: Layers left in float (mixed precision).
        only: Quantize these layers and nothing else (sensitivity analysis).
        layout: For static int8: ``qdq`` or ``qoperator`` (see :data:`edgec.formats.LAYOUTS`).
        split_ranges: For static int8: keep a Concat whose parts differ by orders of magnitude in
            range (a detector's boxes beside its scores) in float, each part quantized on its own.
            ``False`` forces one int8 scale on it, which is what breaks detectors; for comparisons only.

    Example:
        >>> Recipe("int8", mode="dynamic", keep_float=("node_MatMul_121",)).label()
        'int8 dynamic, 1 layer float'
    """

    precision: str = "int8"
    mode: str = "static"
    calibration: str = "minmax"
    smoothing: float | None = None
    keep_float: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    layout: str = "qdq"
    split_ranges: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValidationError(f"unknown int8 mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.calibration not in CALIBRATIONS:
            raise ValidationError(f"unknown calibration {self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.layout not in LAYOUTS:
            raise ValidationError(f"unknown int8 layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.smoothing is not None and not 0.0 < self.smoothing < 1.0:
            raise ValidationError(f"smoothing must be between 0 and 1, got {self.smoothing}")

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "int8" and (self.mode == "static" or self.smoothing is not None)

    def label(self) -> str:
        """A short human name: ``int8 static entropy, smoothed 0.7, 2 layers float``."""
        if self.precision != "int8":
            return self.precision
        parts = [f"int8 {self.mode}" + (f" {self.calibration}" if self.mode == "static" else "")]
        if self.layout == "qoperator":
            parts.append("QOperator u8s8")
        if self.smoothing is not None:
            parts.append(f"smoothed {self.smoothing:g}")
        if not self.split_ranges and self.mode == "static":
            parts.append("one scale per concat")
        if self.keep_float:
            n = len(self.keep_float)
            parts.append(f"{n} layer{'s' if n != 1 else ''} float")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["keep_float"] = list(self.keep_float)
        data["only"] = list(self.only) if self.only is not None else None
        return data


@dataclass(frozen=True)
class Layer:
    """A layer whose weights int8 would quantize.

    Attributes:
        name: The name the converter's recipes use (ONNX node name, TFLite output tensor).
        display: A readable name (the PyTorch module path where it is known).
        op: Operator type (``Conv``, ``MatMul``, ``FULLY_CONNECTED``...).
        params: Number of weight elements.
    """

    name: str
    display: str
    op: str
    params: int


class Converter(Protocol):
    """Quantizes and reads the artifacts of one format, whatever model they came from.

    What each format's quantizer can make (modes, calibrations, smoothing) is in the format
    table, :data:`edgec.formats.FORMATS`; how each kind of model is exported to it, in the
    exporter table (:data:`edgec.converters.exporters.ROUTES`).
    """

    format: str

    def quantize(
        self,
        fp32: Path,
        out: Path,
        *,
        recipe: Recipe,
        source: Source,
        calib: Samples | None,
        profile: Target,
    ) -> dict[str, object]:
        """Write ``fp32`` quantized by ``recipe`` to ``out``; return what was done (for the report)."""
        ...

    def layers(self, fp32: Path) -> list[Layer]:
        """The layers of ``fp32`` that int8 quantizes, in graph order."""
        ...

    def io_specs(self, path: Path, source: Source) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs of the artifact, named as the source names them."""
        ...
