"""Load the model a user gives edgec, safely, into one :class:`~edgec.converters.base.Source` shape.

Accepted forms:

- ``model.pt2``: a ``torch.export`` program. Loaded with every ``torch.load`` forced to
  ``weights_only=True`` and raw pickle refused, so a hostile file cannot run code.
- ``model.onnx``: checked with the ONNX checker, run with onnxruntime.
- ``model.keras`` / ``model.h5``: Keras' own loader with ``safe_mode=True`` (no Python code from
  the file runs); a SavedModel folder (``saved_model.pb`` inside): TensorFlow's loader.
- ``pkg.module:factory``: a callable returning an ``nn.Module``, plus optional weights
  (``.safetensors``, or a ``state_dict`` read with ``weights_only=True``).
- an ``nn.Module``, ``ExportedProgram`` or ``keras.Model`` object (Python API).

Pickled checkpoints (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are refused as models: unpickling
runs arbitrary code.
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...converters.base import Source
from ...errors import CalibrationError, ModelLoadError
from ...runtime.bundle.arrays import read_npz
from .data import LABELS_KEY
from .keras import KERAS_SUFFIXES, from_keras, is_saved_model, load_keras, load_saved_model, precheck_keras
from .onnx import load_onnx
from .pytorch import (call_factory, fixed_batch, from_module, from_program, in_chunks, load_pt2, load_weights,
                      require_torch, state_bytes, trainable)

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def precheck(model: Any) -> None:
    """Cheap checks on a model argument (no framework import), so obvious mistakes fail first.

    Raises:
        ModelLoadError: A missing path, a folder, a pickle, or an unknown kind of file.
    """
    if not isinstance(model, (str, Path)):
        return
    path = Path(model)
    if not path.exists():
        if FACTORY_RE.match(str(model)):
            return
        raise ModelLoadError(
            f"model file {path} does not exist: pass a .pt2, .onnx, .keras or .h5 file, a SavedModel folder, "
            "or pkg.module:factory"
        )
    if path.is_dir():
        if is_saved_model(path):
            return
        raise ModelLoadError(f"{path} is a folder without saved_model.pb: pass a model file (.pt2, .onnx, .keras, "
                             ".h5), a TensorFlow SavedModel folder, or pkg.module:factory")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"refusing to load {path.name}: pickled checkpoints can run arbitrary code when "
            "loaded. Export a program with torch.export.save(torch.export.export(model, args), "
            "'model.pt2'), or save the weights with safetensors and pass "
            "pkg.module:factory --weights model.safetensors"
        )
    if suffix in KERAS_SUFFIXES:
        precheck_keras(path)
        return
    if suffix == ".tflite":
        raise ModelLoadError(
            f"{path.name} is already a TFLite model: edgec converts from .pt2, .onnx, .keras or "
            "pkg.module:factory; to serve a .tflite, convert its source model"
        )
    if suffix not in (".pt2", ".onnx"):
        raise ModelLoadError(
            f"cannot tell what kind of model {path.name} is from its suffix {suffix or '(none)'}: "
            "expected .pt2 (torch.export), .onnx, .keras, .h5, a SavedModel folder, or pkg.module:factory"
        )
    if suffix == ".pt2" and not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path.name} is not a torch.export archive (a .pt2 is a zip file); it may be "
            "truncated or corrupt: save it again with torch.export.save"
        )


def model_kind(model: Any) -> str:
    """What :func:`load_model` will make of ``model``, without loading it: ``torch``, ``onnx`` or ``keras``
    (the :attr:`Source.kind`), so the target format is chosen before any slow step."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix.lower() == ".onnx":
            return "onnx"
        if path.suffix.lower() in KERAS_SUFFIXES or (path.is_dir() and is_saved_model(path)):
            return "keras"
        return "torch"  # .pt2, pkg.module:factory
    keras = sys.modules.get("keras")
    return "keras" if keras is not None and isinstance(model, keras.Model) else "torch"


def load_model(
    model: Any,
    *,
    weights: str | Path | None = None,
    example: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray] | None] | None = None,
) -> Source:
    """Load ``model`` into a :class:`~edgec.converters.base.Source`.

    Args:
        model: A path (``.pt2``, ``.onnx``, ``.keras``, ``.h5``, a SavedModel folder),
            ``pkg.module:factory``, an ``nn.Module`` or an ``ExportedProgram``.
        weights: Weights for a factory or module (``.safetensors``, or a ``.pt`` state_dict
            read with ``weights_only=True``).
        example: Example inputs keyed by input name (first axis the batch), or a function making them
            (called only when needed). Needed to trace an ``nn.Module`` or factory; files carry their own
            signature.

    Raises:
        ModelLoadError: The file is missing, corrupt, of an unknown kind, or unsafe to load.
        MissingDependencyError: The framework for this kind of model is not installed.
    """
    precheck(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.exists():
            return _load_file(path, weights=weights)
        return from_module(call_factory(str(model)), label=str(model), weights=weights, example=_made(example))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        return from_program(model, label="ExportedProgram", size_bytes=state_bytes(model.state_dict))
    if torch is not None and isinstance(model, torch.nn.Module):
        return from_module(model, label=type(model).__name__, weights=weights, example=_made(example))
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model):
        return from_keras(model, label=type(model).__name__)
    raise ModelLoadError(
        f"cannot convert a {type(model).__name__}: pass a path, pkg.module:factory, an nn.Module "
        "or an ExportedProgram"
    )


def load_module(model: Any, *, weights: str | Path | None = None, what: str = "model") -> Any:
    """A trainable ``torch.nn.Module`` from ``pkg.module:factory`` (+ weights), a module, or a ``.pt2``.

    A ``.pt2`` gives the exported graph as a module: it trains, but it has no Conv or Linear
    submodules left for structured pruning to remove channels from.

    Raises:
        ModelLoadError: Not loadable as a torch module (an ``.onnx`` file, a bad factory...).
    """
    torch = require_torch()
    precheck(model)
    if isinstance(model, torch.nn.Module):
        if weights is not None:
            load_weights(model, weights)
        return model
    if isinstance(model, (str, Path)) and Path(model).exists():
        path = Path(model)
        if path.suffix.lower() != ".pt2":
            raise ModelLoadError(f"{what} {path.name} is not a PyTorch model: training needs a .pt2 or "
                                 "pkg.module:factory (with --weights)")
        if weights is not None:
            raise ModelLoadError("--weights applies to pkg.module:factory models, not to .pt2 files")
        program = load_pt2(path)
        return in_chunks(trainable(program.module()), fixed_batch(program.inputs))
    if isinstance(model, (str, Path)):
        module = call_factory(str(model))
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"{model} returned a {type(module).__name__}, not a torch.nn.Module")
        if weights is not None:
            load_weights(module, weights)
        return module
    raise ModelLoadError(f"cannot train a {type(model).__name__}: pass pkg.module:factory, a .pt2 or an nn.Module")


def _load_file(path: Path, *, weights: str | Path | None) -> Source:
    if weights is not None:
        raise ModelLoadError(f"--weights applies to pkg.module:factory models, not to {path.suffix} files")
    suffix = path.suffix.lower()
    if path.is_dir():
        return load_saved_model(path)
    if suffix in KERAS_SUFFIXES:
        return load_keras(path)
    if suffix != ".pt2":
        return load_onnx(path)
    source = load_pt2(path)
    source.warnings.extend(_size_warnings(path, source.program))
    return source


# A .pt2 past this many times its weights (and this much beyond them) holds something else.
OVERSIZED_RATIO, OVERSIZED_SLACK = 4, 8 * 2**20


def _size_warnings(path: Path, program: Any) -> list[str]:
    """Why a ``.pt2`` is much larger than its weights: ``torch.export.save`` keeps the example inputs."""
    weights = state_bytes(program.state_dict) + state_bytes(getattr(program, "constants", {}) or {})
    size = path.stat().st_size
    if size <= OVERSIZED_RATIO * weights + OVERSIZED_SLACK:
        return []
    examples = getattr(program, "example_inputs", None) or ((), {})
    held = state_bytes({str(i): t for i, t in enumerate(examples[0])}) if examples and examples[0] else 0
    shapes = ", ".join(str(list(t.shape)) for t in (examples[0] if examples else ()) if hasattr(t, "shape"))
    why = (f"its example inputs ({shapes}, {held / 2**20:.1f} MB) are saved in it: export with two samples "
           "(x[:2]) and a dynamic batch (dynamic_shapes=...), not the dataset" if held > size / 2 else
           "check what else was saved in it")
    return [f"{path.name} is {size / 2**20:.1f} MB but its weights are {weights / 2**20:.1f} MB: {why}"]


def _made(example: Any) -> Mapping[str, np.ndarray] | None:
    return example() if callable(example) else example


def example_inputs(data: Any, input_shapes: Sequence[str] = ()) -> dict[str, np.ndarray] | None:
    """Example inputs to trace a module with: ``--input-shape``, else the first sample of ``data``."""
    if input_shapes:
        return example_from_shapes(input_shapes)
    if isinstance(data, (str, Path)) and Path(data).suffix.lower() == ".npz" and Path(data).is_file():
        try:
            arrays = read_npz(data, what=str(data), error=CalibrationError)
        except CalibrationError:
            return None  # load_samples reports the problem with the file precisely
        return {k: v[:1] if v.ndim else v for k, v in arrays.items() if k != LABELS_KEY}
    if isinstance(data, np.ndarray):
        return {"input": data[:1] if data.ndim else data}
    if isinstance(data, Mapping):
        return {k: np.asarray(v)[:1] if np.ndim(v) else np.asarray(v) for k, v in data.items() if k != LABELS_KEY}
    return None


def example_from_shapes(shapes: Sequence[str]) -> dict[str, np.ndarray]:
    """Parse ``--input-shape`` values (``1x3x224x224`` or ``name=1x3x224x224``) into zeros."""
    out: dict[str, np.ndarray] = {}
    for i, text in enumerate(shapes):
        name, _, dims = text.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
        except ValueError:
            raise ModelLoadError(f"--input-shape {text!r} is not like 1x3x224x224 or name=1x3x224x224") from None
        if any(d <= 0 for d in shape):
            raise ModelLoadError(f"--input-shape {text!r} has a dimension that is not positive")
        out[name or f"input_{i}"] = np.zeros(shape, dtype=np.float32)
    return out
