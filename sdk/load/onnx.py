"""ONNX models from any exporter: checked with the ONNX checker, run with onnxruntime as the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ...errors import ModelLoadError, first_line
from ...runtime.bundle.backends.onnx import session, tensor_spec
from ...runtime.bundle.tensors import TensorSpec


@dataclass
class OnnxSource:
    """An ONNX model file, run with onnxruntime as the reference."""

    path: Path
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int
    session: Any
    kind: str = "onnx"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {t.name: feeds[t.name] for t in self.inputs})



def load_onnx(path: Path) -> OnnxSource:
    onnx = need("onnx", extra="sdk", purpose="to load ONNX models")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        detail = first_line(exc)
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX model ({detail}); it may be truncated or corrupt: export it again"
        ) from None
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise ModelLoadError(
            f"{path.name} keeps its weights in external data files: save it as one file "
            "(onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        reference = session(path)
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {first_line(exc)}") from None
    specs = []
    for arg in [*reference.get_inputs(), *reference.get_outputs()]:
        spec = tensor_spec(arg)
        if spec is None:
            raise ModelLoadError(f"ONNX tensor {arg.name} has type {arg.type}, which edgec cannot feed")
        specs.append(spec)
    n = len(reference.get_inputs())
    return OnnxSource(path, path.name, tuple(specs[:n]), tuple(specs[n:]), path.stat().st_size, reference)
