"""One model input or output: its spec, its int8 mapping, and the one check an array must pass.

A :class:`TensorSpec` is what the manifest says about a tensor; :func:`check_array` is the
single place that decides whether an array fits one, for the runtime's requests and the
SDK's sample data alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Model tensor dtypes the runtime knows how to feed and read.
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")
QUANTIZED = ("int8", "uint8", "int16")


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: ``real = (q - zero_point) * scale``."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the caller sees it.

    Attributes:
        name: The name callers use (the original model's input name).
        shape: Dimensions; ``None`` marks a dynamic one (usually the batch).
        dtype: dtype of the tensor inside the model file (``int8`` for full-integer I/O).
        quantization: Scale and zero point when ``dtype`` is a quantized integer type.
        tensor: The name of the tensor inside the model file, when it differs from ``name``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    quantization: Quantization | None = None
    tensor: str | None = None

    @property
    def model_name(self) -> str:
        """The tensor's name inside the model file."""
        return self.tensor or self.name

    @property
    def takes_floats(self) -> bool:
        """Callers pass floats: a float tensor, or an integer one quantized from floats."""
        return self.dtype.startswith("float") or self.quantization is not None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        q = data.get("quantization")
        return cls(
            name=str(data["name"]),
            shape=tuple(None if d is None else int(d) for d in data["shape"]),
            dtype=str(data["dtype"]),
            quantization=Quantization(float(q["scale"]), int(q["zero_point"])) if q else None,
            tensor=data.get("tensor"),
        )

    def describe(self) -> str:
        """``name: float32[?, 1, 8, 8]`` for messages."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def lists_whole(array: np.ndarray, spec: TensorSpec) -> bool:
    """Whether ``array`` lists whole inputs for ``spec`` along its first axis: it has one axis more than
    the input (an RNN state ``[N, 2, 1, 128]`` for ``[2, batch, 128]``, ``[N]`` for a 0-d input)."""
    return np.ndim(array) == len(spec.shape) + 1


def check_listed(array: np.ndarray, spec: TensorSpec, *, what: str = "input") -> tuple[bool, str | None]:
    """For ``array`` listing samples of ``spec`` along its first axis: whether it lists whole inputs
    (:func:`lists_whole`), and what is wrong with it, or ``None`` if it fits."""
    whole = lists_whole(array, spec)
    return whole, check_array(array[0] if whole else array, spec, what=what, samples=not whole)


def check_array(array: np.ndarray, spec: TensorSpec, *, what: str = "input", samples: bool = False) -> str | None:
    """What is wrong with ``array`` as a value for ``spec``, or ``None`` if it fits.

    Args:
        array: The array, first axis the batch (or the samples).
        spec: The tensor it is meant for.
        what: How the message names the array (``input``, ``calibration data array``).
        samples: The first axis counts samples: any length is fine. Otherwise a fixed batch
            must match, except a fixed batch of 1, which the runtime serves row by row.
    """
    kind = array.dtype.kind
    expected = f"expected {spec.describe()}"
    if spec.takes_floats and kind != "f":
        hint = f" (scale {array.dtype} images to float first, as in training)" if kind in "iu" else ""
        return f"{what} {spec.name} must be a float array, got {array.dtype}{hint}: {expected}"
    if not spec.takes_floats and spec.dtype.startswith(("int", "uint")) and kind not in "iu":
        return f"{what} {spec.name} must be an integer array, got {array.dtype}: {expected}"
    if spec.dtype == "bool" and kind != "b":
        return f"{what} {spec.name} must be a bool array, got {array.dtype}: {expected}"
    if array.ndim != len(spec.shape):
        return f"{what} {spec.name} has {array.ndim} dimensions {list(array.shape)}, expected {len(spec.shape)}: " \
               f"{spec.describe()}"
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if axis == 0 and (samples or want == 1):
            continue
        if want is not None and got != want:
            return f"{what} {spec.name} has shape {list(array.shape)}, but dimension {axis} must be {want} for " \
                   f"{spec.describe()}"
    return None


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the tensor's integer type with its scale and zero point (round, saturate)."""
    if spec.quantization is None:
        raise ValueError(f"{spec.name} has no quantization parameters")
    info = np.iinfo(spec.dtype)
    q = np.round(x.astype(np.float32) / spec.quantization.scale) + spec.quantization.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Integer tensor -> float32 with its scale and zero point."""
    if spec.quantization is None:
        raise ValueError(f"{spec.name} has no quantization parameters")
    return ((q.astype(np.float32) - spec.quantization.zero_point) * spec.quantization.scale).astype(np.float32)
