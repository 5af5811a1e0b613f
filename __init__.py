"""edgec: take a trained model to an edge board and keep it running there.

The package root stays light (no torch, tensorflow or onnxruntime import); the public verbs
load their frameworks when called.

Example:
    >>> import edgec
    >>> result = edgec.convert("model.pt2", device="rpi4", calib="calib.npz", out="build/rpi4")
    >>> model = edgec.load(result.bundle)
    >>> outputs = model.predict({"input": x})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .errors import EdgecError as EdgecError

if TYPE_CHECKING:  # pragma: no cover
    from .runtime.bundle.model import load as load
    from .sdk.compress import compress as compress
    from .sdk.pipeline import convert as convert
    from .sdk.analyze import analyze as analyze

__all__ = ["__version__", "EdgecError", "analyze", "compress", "convert", "load"]


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import edgec` free of heavy frameworks: the verbs mirror the CLI.
    if name == "convert":
        from .sdk.pipeline import convert

        return convert
    if name == "analyze":
        from .sdk.analyze import analyze

        return analyze
    if name == "compress":
        from .sdk.compress import compress

        return compress
    if name == "load":
        from .runtime.bundle.model import load

        return load
    raise AttributeError(f"module 'edgec' has no attribute {name!r}")
