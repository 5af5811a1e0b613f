"""Compression: structured and unstructured pruning with distillation, measured on the export.

Example:
    >>> from edgec.sdk.compress import compress
    >>> result = compress("pkg.nets:cnn", data="train.npz", out="small.pt2", prune=0.5, weights="cnn.safetensors")
"""

from __future__ import annotations

from .job import CompressConfig as CompressConfig
from .job import CompressResult as CompressResult
from .job import compress as compress

__all__ = ["CompressConfig", "CompressResult", "compress"]
