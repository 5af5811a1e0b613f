"""Optional dependencies: import one when it is needed, or say exactly which package to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# Import names whose pip distribution is spelled differently.
_DISTRIBUTIONS = {
    "PIL": "pillow",
    "ai_edge_litert": "ai-edge-litert",
    "ai_edge_quantizer": "ai-edge-quantizer",
    "litert_torch": "litert-torch",
    "paho": "paho-mqtt",
    "grpc": "grpcio",
    "google": "protobuf",
    "sklearn": "scikit-learn",
    "tensorflow": "tensorflow-cpu",
    "tflite_runtime": "tflite-runtime",
    "torch_pruning": "torch-pruning",
}


def need(module: str, *, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module``, or raise an error naming the package that is really missing.

    Args:
        module: The module to import (``onnxruntime.quantization``).
        extra: The edgec extra that installs it (``sdk``, ``runtime``, ``tf``).
        purpose: What it is needed for, for the message (``to quantize ONNX models``).

    Raises:
        MissingDependencyError: ``module``, or a package it needs, is not installed; the
            message names that package, not ``module``.

    Example:
        >>> ort = need("onnxruntime", extra="runtime", purpose="to run ONNX bundles")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).split(".")[0]
        raise MissingDependencyError(_DISTRIBUTIONS.get(missing, missing.replace("_", "-")), extra, purpose) from None
