"""Quantization: the accuracy-aware policy search, per-layer sensitivity, and quantization-aware training.

Example:
    >>> from edgec.sdk.quantize import qat
    >>> result = qat(model, "train.npz", out="build/qat", eval_data="test.npz", epochs=2)
"""

from __future__ import annotations

from .aware import QATResult as QATResult
from .aware import qat as qat
from .budget import Budget as Budget
from .search import search as search

__all__ = ["Budget", "QATResult", "qat", "search"]
