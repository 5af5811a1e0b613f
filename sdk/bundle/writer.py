"""Write bundles atomically: everything goes to a staging folder beside the target and is
renamed into place only once complete, so a failure leaves no partial bundle behind.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from ..._version import __version__
from ...errors import BundleError

_PACKAGES = ("numpy", "torch", "onnx", "onnxscript", "onnxruntime", "litert-torch", "ai-edge-quantizer", "ai-edge-litert")


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse an existing output folder unless ``force``; refuse a file in the way always."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file: choose a folder path for the bundle")
    if out.exists() and not force:
        raise BundleError(f"output folder {out} already exists: pass --force to replace it, or choose another --out")
    parent = out.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot create {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise BundleError(f"cannot write to {parent}: check its permissions or choose another --out")


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out``; removed on any failure inside the block."""
    out = out.resolve()
    stage = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def publish(stage: Path, out: Path, *, force: bool) -> Path:
    """Move a complete staging folder to ``out`` (replacing it when ``force``)."""
    out = out.resolve()
    for path in stage.iterdir():  # flush file contents before the rename makes them visible
        os.chmod(path, 0o644)  # (some exporters write their files executable)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out.exists():
        if not force:
            shutil.rmtree(stage, ignore_errors=True)
            raise BundleError(f"output folder {out} appeared while converting: pass --force to replace it")
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    try:
        stage.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def versions() -> dict[str, str]:
    """Versions of edgec, Python and the converters present, for the manifest."""
    found = {"edgec": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
