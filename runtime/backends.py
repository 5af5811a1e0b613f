"""Inference backends behind one protocol: onnxruntime and the TFLite interpreter.

A backend runs a model file on arrays already in the model's own dtypes and names; the
caller-facing work (dtype casts, int8 I/O, batching) lives in :mod:`edgec.runtime.model`.
Only numpy and the backend's own runtime are imported, and only when a backend is opened.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._quiet import quiet
from ..errors import BundleError, MissingDependencyError
from ..errors import first_line as _first_line

log = logging.getLogger("edgec.runtime")


class Backend(Protocol):
    """Runs one model file."""

    name: str

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``feeds`` (keyed by model tensor name); outputs in model order."""
        ...


class OnnxRuntimeBackend:
    """onnxruntime, with the manifest's execution providers where this build has them."""

    name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int, providers: tuple[str, ...], lean: bool = False,
                 exact_int8: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime", "runtime", "to run ONNX bundles") from None
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        for p in providers:
            if p not in available:
                log.info("execution provider %s is not in this onnxruntime build; skipping it", p)
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle worker threads spin by default; with several models on a board's few cores,
        # one model's spinning threads steal the cores another needs (measured: alternating
        # two sessions on 2 cores doubled both latencies). Sleeping workers cost ~nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if exact_int8:
            # x86 CPUs without VNNI add pairs of u8 x s8 products in 16 bits: full-range int8
            # weights saturate there (measured: cosine 0.83 to fp32 on a digits CNN). The
            # exact u8u8 kernels cost some speed; models with 7-bit weights do not need them.
            options.add_session_config_entry("session.x64quantprecision", "1")
        if lean:
            # Under a memory budget: no arena that keeps every peak allocation for reuse
            # (the known cause of RSS growing to GiBs), and no pre-packed weight copies.
            options.enable_cpu_mem_arena = False
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own non-exported exception types
            if chosen == ["CPUExecutionProvider"]:
                raise BundleError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from None
            # A provider that is built in but cannot start here (no GPU, driver mismatch):
            # fall back to the CPU and say why.
            log.warning("execution providers %s failed for %s (%s); falling back to CPU",
                        ", ".join(chosen[:-1]), path.name, _first_line(exc))
            try:
                self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc2:
                raise BundleError(f"onnxruntime cannot load {path.name}: {_first_line(exc2)}") from None
        self.providers = tuple(self.session.get_providers())
        for p in chosen:
            if p not in self.providers:
                log.warning("execution provider %s did not start for %s; running on %s",
                            p, path.name, ", ".join(self.providers))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


def _interpreter_class() -> Any:
    """The first TFLite interpreter that imports: ai-edge-litert, tflite-runtime, TensorFlow."""
    for module, attr in (
        ("ai_edge_litert.interpreter", "Interpreter"),
        ("tflite_runtime.interpreter", "Interpreter"),
    ):
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError:
            continue
    try:  # last resort on boards that already carry full TensorFlow
        return importlib.import_module("tensorflow").lite.Interpreter
    except ImportError:
        raise MissingDependencyError(
            "ai-edge-litert (or tflite-runtime)", "runtime", "to run TFLite bundles"
        ) from None


class TFLiteBackend:
    """The TFLite interpreter, fed by the names of the model's default signature.

    Inputs go in with ``set_tensor`` and results come out with ``get_tensor`` (a copy);
    tensors are resized and reallocated only when an input's shape changes, which the
    signature runner would do on every call.
    """

    name = "tflite"

    def __init__(self, path: Path, *, threads: int) -> None:
        interpreter_cls = _interpreter_class()
        try:
            with quiet():  # the interpreter announces its XNNPACK delegate from C++
                self.interpreter = interpreter_cls(model_path=str(path), num_threads=threads)
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

def open_backend(fmt: str, path: Path, *, threads: int, providers: tuple[str, ...], lean: bool = False,
                 exact_int8: bool = True) -> Backend:
    """Open ``path`` with the backend for format ``fmt``.

    Raises:
        BundleError: Unknown format, or the backend cannot load the file.
        MissingDependencyError: The backend's runtime is not installed.
    """
    if fmt == "onnx":
        return OnnxRuntimeBackend(path, threads=threads, providers=providers, lean=lean, exact_int8=exact_int8)
    if fmt == "tflite":
        return TFLiteBackend(path, threads=threads)
    raise BundleError(f"bundle format {fmt!r} is not one this runtime serves (onnx, tflite)")

