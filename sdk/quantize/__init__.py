"""Quantization: the accuracy-aware policy search, per-layer sensitivity, and quantization-aware training.

Example:
    >>> from edgec.sdk.quantize import qat
    >>> result = qat(model, QATConfig(epochs=2), data="train.npz", eval_data="test.npz", out="build/qat")
"""

from __future__ import annotations

from .aware import QATConfig as QATConfig
from .aware import QATResult as QATResult
from .aware import qat as qat
from .budget import Budget as Budget
from .search import search as search

__all__ = ["Budget", "QATConfig", "QATResult", "qat", "search"]
