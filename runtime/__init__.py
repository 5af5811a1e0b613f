"""The on-device runtime: load a bundle, check it, serve predictions.

Board-side code only: numpy, onnxruntime or a TFLite interpreter. Never torch, tensorflow,
onnx or ``edgec.sdk`` (a test enforces it).
"""

from __future__ import annotations

from .bundle.manifest import Manifest as Manifest
from .bundle.tensors import TensorSpec as TensorSpec
from .bundle.manifest import read_manifest as read_manifest
from .bundle.model import LoadedModel as LoadedModel
from .bundle.model import load as load

__all__ = ["LoadedModel", "Manifest", "TensorSpec", "load", "read_manifest"]
