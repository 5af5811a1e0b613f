"""Target formats: one module per format, all listed in :data:`FORMATS`.

This table drives the CLI's choices, option validation and device-profile checks. It
imports nothing heavy; a format's module is imported only when it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from .base import Converter

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Format:
    """One target format.

    Attributes:
        name: The name users type (``--format onnx``).
        suffix: The model file's suffix inside a bundle.
        precisions: Precisions this format's converter can produce.
        module: The module implementing :class:`~edgec.converters.base.Converter`.
        extra: The pip extra that brings its dependencies.
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    module: str
    extra: str = "sdk"

    def converter(self) -> Converter:
        """Import this format's module and return its converter."""
        return importlib.import_module(self.module).CONVERTER


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", ".onnx", PRECISIONS, "edgec.converters.onnx"),
    "tflite": Format("tflite", ".tflite", PRECISIONS, "edgec.converters.tflite"),
}


def get_format(name: str) -> Format:
    """Return the format called ``name``.

    Raises:
        ValidationError: No such format; the message lists the valid ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise ValidationError(
            f"unknown format {name!r}: choose one of {', '.join(FORMATS)}"
        ) from None


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one edgec knows.

    Raises:
        ValidationError: Unknown precision; the message lists the valid ones.
    """
    if precision not in PRECISIONS:
        raise ValidationError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    return precision
