"""TFLite on the board: ai-edge-litert, else tflite-runtime, else TensorFlow's interpreter."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from ...._quiet import quiet
from ....errors import BundleError, MissingDependencyError
from ....errors import first_line as _first_line
from . import BackendOptions


def interpreter_class() -> Any:
    """The first TFLite interpreter that imports: ai-edge-litert, tflite-runtime, TensorFlow."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(module).Interpreter
        except ImportError:
            continue
    try:  # last resort on boards that already carry full TensorFlow
        return importlib.import_module("tensorflow").lite.Interpreter
    except ImportError:
        raise MissingDependencyError("ai-edge-litert (or tflite-runtime)", "runtime", "to run TFLite bundles") from None


class TFLiteBackend:
    """The TFLite interpreter, fed by the names of the model's default signature.

    Inputs go in with ``set_tensor`` and results come out with ``get_tensor`` (a copy);
    tensors are resized and reallocated only when an input's shape changes, which the
    signature runner would do on every call.
    """

    name = "tflite"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        interpreter_cls = interpreter_class()
        try:
            with quiet():  # the interpreter announces its XNNPACK delegate from C++
                self.interpreter = interpreter_cls(model_path=str(path), num_threads=options.threads)
                self.interpreter.allocate_tensors()
                signatures = self.interpreter.get_signature_list()
                if not signatures:
                    raise ValueError("the model has no signature")
                self.signature = next(iter(signatures))
                runner = self.interpreter.get_signature_runner(self.signature)
                self._details = (runner.get_input_details(), runner.get_output_details())
                # The runner holds a reference to the interpreter's internals, which makes
                # invoke() refuse to run: read what it knows, then let it go.
                del runner
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"the TFLite interpreter cannot load {path.name}: {_first_line(exc)}") from None
        self.output_names = list(signatures[self.signature]["outputs"])
        self._inputs = {name: int(d["index"]) for name, d in self._details[0].items()}
        self._outputs = [int(self._details[1][name]["index"]) for name in self.output_names]
        self._shapes = {name: tuple(int(n) for n in d["shape"]) for name, d in self._details[0].items()}
        self.input_types = {name: np.dtype(d["dtype"]).name for name, d in self._details[0].items()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        it = self.interpreter
        for name, value in feeds.items():
            if value.shape != self._shapes[name]:
                self._resize(feeds)
                break
        for name, value in feeds.items():
            it.set_tensor(self._inputs[name], value)
        it.invoke()
        return [it.get_tensor(index) for index in self._outputs]  # get_tensor copies

    def _resize(self, feeds: dict[str, np.ndarray]) -> None:
        for name, value in feeds.items():
            if value.shape != self._shapes[name]:
                self.interpreter.resize_tensor_input(self._inputs[name], value.shape)
                self._shapes[name] = value.shape
        self.interpreter.allocate_tensors()

    def details(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Input and output details keyed by signature name (shape, dtype, quantization)."""
        return self._details


BACKEND = TFLiteBackend
