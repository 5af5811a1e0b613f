"""edgec: take a trained model to an edge board and keep it running there.

The package root stays light (no torch, tensorflow or onnxruntime import); the public verbs
load their frameworks when called. The four host verbs share one shape (see
:mod:`edgec.sdk.progress`): ``verb(model, config=None, *, <data>, out=None, progress=None, **options)``.

Example:
    >>> import edgec
    >>> result = edgec.convert("model.pt2", edgec.ConvertConfig(device="rpi4"), calib="calib.npz", out="build/rpi4")
    >>> model = edgec.load(result.bundle)
    >>> outputs = model.predict({model.inputs[0].name: x})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .errors import EdgecError as EdgecError

if TYPE_CHECKING:  # pragma: no cover
    from .runtime.bundle.model import load as load
    from .sdk.analyze import AnalyzeConfig as AnalyzeConfig
    from .sdk.analyze import analyze as analyze
    from .sdk.compress import CompressConfig as CompressConfig
    from .sdk.compress import compress as compress
    from .sdk.pipeline import convert as convert
    from .sdk.plan import ConvertConfig as ConvertConfig
    from .sdk.progress import Progress as Progress
    from .sdk.quantize.aware import QATConfig as QATConfig
    from .sdk.quantize.aware import qat as qat

# Lazy re-exports keep `import edgec` free of heavy frameworks: the verbs mirror the CLI.
_LAZY = {
    "convert": ".sdk.pipeline", "ConvertConfig": ".sdk.plan",
    "analyze": ".sdk.analyze", "AnalyzeConfig": ".sdk.analyze",
    "compress": ".sdk.compress", "CompressConfig": ".sdk.compress",
    "qat": ".sdk.quantize.aware", "QATConfig": ".sdk.quantize.aware",
    "Progress": ".sdk.progress",
    "load": ".runtime.bundle.model",
}
__all__ = ["__version__", "EdgecError", "convert", "ConvertConfig", "analyze", "AnalyzeConfig", "compress",
           "CompressConfig", "qat", "QATConfig", "Progress", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'edgec' has no attribute {name!r}")
