"""Keras and TensorFlow models: ``.keras`` / ``.h5`` through Keras' own loader, SavedModel folders through TensorFlow.

Nothing here unpickles or runs code from the file: Keras loads with ``safe_mode=True``, which
refuses the Python bytecode a ``Lambda`` layer carries, and a SavedModel is a TensorFlow graph.
The original's outputs (the reference every artifact is verified against) come from the Keras
model or the SavedModel's serving signature itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ..._quiet import quiet
from ...converters.exporters.from_keras import tensorflow
from ...errors import ModelLoadError, first_line
from ...runtime.bundle.tensors import TensorSpec

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAVED_MODEL_FILE = "saved_model.pb"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class KerasSource:
    """A Keras model or a TensorFlow SavedModel, run by TensorFlow as the reference.

    Attributes:
        function: A ``tf.function`` taking the inputs in order and returning the outputs in order.
        model: The Keras model (``None`` for a SavedModel folder).
        signature_outputs: The names Keras' export (and so the TFLite file converted from it)
            gives the outputs, in order, where they are not the source's own names.
    """

    path: Path
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int
    function: Any
    model: Any = None
    signature_outputs: tuple[str, ...] = ()
    loaded: Any = None  # a SavedModel's loaded object: its variables back the signature
    kind: str = "keras"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outs = self.function(*[np.ascontiguousarray(feeds[t.name]) for t in self.inputs])
        return [np.asarray(o) for o in outs]


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / SAVED_MODEL_FILE).is_file()


def precheck_keras(path: Path) -> None:
    """A ``.keras`` must be a zip and an ``.h5`` an HDF5 file, before TensorFlow is imported.

    Raises:
        ModelLoadError: The file is neither (truncated, renamed, or not a Keras file).
    """
    import zipfile

    suffix = path.suffix.lower()
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path.name} is not a Keras archive (a .keras file is a zip); it may be truncated "
                             "or corrupt: save it again with model.save('model.keras')")
    if suffix in (".h5", ".hdf5"):
        with path.open("rb") as f:
            if f.read(8) != _HDF5_MAGIC:
                raise ModelLoadError(f"{path.name} is not an HDF5 file; it may be truncated or corrupt: save the "
                                     "model again with model.save('model.keras')")


def load_keras(path: Path) -> KerasSource:
    """Load a ``.keras`` or ``.h5`` model with Keras' loader in safe mode.

    The file's kind was checked by :func:`precheck_keras` (through ``models.precheck``).

    Raises:
        ModelLoadError: Corrupt, weights only, unsafe (Python code in it), or using layers Keras cannot find.
        MissingDependencyError: TensorFlow/Keras are not installed (extra ``tf``).
    """
    tensorflow()  # first and quietly: Keras runs on it
    keras = need("keras", extra="tf", purpose="to load Keras models")
    if keras.backend.backend() != "tensorflow":
        raise ModelLoadError(f"Keras runs on the {keras.backend.backend()} backend here; edgec converts Keras "
                             "models through TensorFlow: set KERAS_BACKEND=tensorflow")
    try:
        with quiet():
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        raise _load_error(path, exc) from None
    return from_keras(model, label=path.name, path=path, size_bytes=path.stat().st_size)


def from_keras(model: Any, *, label: str, path: Path | None = None, size_bytes: int | None = None) -> KerasSource:
    """A :class:`KerasSource` for a loaded Keras model.

    Raises:
        ModelLoadError: The model has no inputs yet (never built).
    """
    tf = tensorflow()
    if not getattr(model, "inputs", None):
        raise ModelLoadError(f"{label} has no input shape (a Sequential model never built): give its first "
                             "layer an input, e.g. keras.Input((28, 28, 1)), and save it again")
    tensors = list(model.inputs)
    inputs = tuple(TensorSpec(_layer_name(t, f"input_{i}"), _shape(t.shape), _dtype(t.dtype))
                   for i, t in enumerate(tensors))
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(model.outputs) or len(set(out_names)) != len(out_names):
        out_names = [f"output_{i}" for i in range(len(model.outputs))]
    outputs = tuple(TensorSpec(_safe(n), _shape(t.shape), _dtype(t.dtype)) for n, t in zip(out_names, model.outputs))
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in inputs]

    def call(*args: Any) -> list[Any]:
        out = model(list(args) if len(args) > 1 else args[0], training=False)
        return [tf.convert_to_tensor(o) for o in tf.nest.flatten(out)]

    function = tf.function(call, input_signature=specs, reduce_retracing=True)
    if size_bytes is None:
        size_bytes = sum(int(np.prod(w.shape)) * np.dtype(_dtype(w.dtype)).itemsize for w in model.weights)
    return KerasSource(path or Path(label), label, inputs, outputs, size_bytes, function, model=model,
                       signature_outputs=tuple(f"output_{i}" for i in range(len(outputs))))


def load_saved_model(path: Path) -> KerasSource:
    """Load a TensorFlow SavedModel folder and serve its ``serving_default`` signature (else its only one).

    Raises:
        ModelLoadError: Not a SavedModel, no signature to serve, or inputs edgec cannot feed.
        MissingDependencyError: TensorFlow is not installed (extra ``tf``).
    """
    if not is_saved_model(path):
        raise ModelLoadError(f"{path} is a folder without {SAVED_MODEL_FILE}: pass a SavedModel folder "
                             "(model.export('folder') in Keras), or a model file (.keras, .h5, .pt2, .onnx)")
    tf = tensorflow()
    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"TensorFlow cannot load the SavedModel {path.name}: {first_line(exc, 200)}") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ModelLoadError(f"the SavedModel {path.name} has no serving signature: export it with "
                             "model.export(folder) (Keras) or tf.saved_model.save(obj, folder, signatures=...)")
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    fn = signatures[key]
    args, kwargs = fn.structured_input_signature
    if args or not kwargs:
        raise ModelLoadError(f"the SavedModel {path.name}'s signature {key!r} does not take named inputs")
    in_names = list(kwargs)
    outs = fn.structured_outputs
    if not isinstance(outs, Mapping):
        raise ModelLoadError(f"the SavedModel {path.name}'s signature {key!r} does not name its outputs")
    out_names = sorted(outs)
    inputs = tuple(TensorSpec(n, _shape(kwargs[n].shape), _dtype(kwargs[n].dtype)) for n in in_names)
    outputs = tuple(TensorSpec(n, _shape(outs[n].shape), _dtype(outs[n].dtype)) for n in out_names)
    specs = [tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n) for n in in_names]

    def call(*values: Any) -> list[Any]:
        result = fn(**dict(zip(in_names, values)))
        return [result[n] for n in out_names]

    function = tf.function(call, input_signature=specs, reduce_retracing=True)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return KerasSource(path, path.name, inputs, outputs, size, function, loaded=loaded)


# -- helpers -----------------------------------------------------------------------------------
def _load_error(path: Path, exc: Exception) -> ModelLoadError:
    text = str(exc)
    if "safe_mode" in text or "Lambda" in text:
        return ModelLoadError(
            f"refusing to load {path.name}: it holds Python code (a Lambda layer) that would run when loaded. "
            "Replace the Lambda with a registered custom layer, or export the model as a SavedModel "
            "(model.export('folder')) and pass the folder")
    if "No model config" in text:
        return ModelLoadError(f"{path.name} holds weights only: save the whole model with model.save('model.keras')")
    if "Could not locate" in text or "Unknown layer" in text or "custom" in text.lower():
        return ModelLoadError(
            f"{path.name} uses a layer Keras cannot find here ({first_line(exc, 160)}): export the model as a "
            "SavedModel (model.export('folder')) and pass the folder")
    return ModelLoadError(f"Keras cannot load {path.name} ({first_line(exc, 200)}); it may be truncated or "
                          "corrupt: save it again with model.save('model.keras')")


def _layer_name(tensor: Any, default: str) -> str:
    """The name of the Input layer that made ``tensor`` (what users named it), else its own."""
    history = getattr(tensor, "_keras_history", None)
    name = getattr(getattr(history, "operation", None), "name", None) or getattr(tensor, "name", None)
    return _safe(name or default)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name).split(":")[0])


def _shape(shape: Any) -> tuple[int | None, ...]:
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    return tuple(None if d is None else int(d) for d in dims)


def _dtype(dtype: Any) -> str:
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
