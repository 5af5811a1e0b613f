"""ONNX models (any exporter's): to ONNX as they are, normalized (see :mod:`edgec.converters.onnx_graph`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import Source, converting
from ..onnx_graph import normalize


def to_onnx(source: Source, path: Path) -> dict[str, Any] | None:
    """Write the normalized fp32 graph; returns what normalizing changed, if anything."""
    with converting(f"preparing {source.path.name}"):
        return normalize(source.path, path)
