"""PyTorch models: to ONNX through ``torch.onnx`` (dynamo), to TFLite through ``litert-torch``.

A ``torch`` source is a float ``torch.export`` program (its quantization is the format's);
a ``qat`` source is a graph trained with fake quantization (PT2E), whose learned int8 scales
each export keeps: ONNX with QuantizeLinear/DequantizeLinear pairs (what onnxruntime and
TensorRT run as int8), TFLite as full-int8 kernels.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..._optional import need
from ..._quiet import quiet
from ..base import Source, converting, example_feeds


def _torch(purpose: str) -> Any:
    return need("torch", extra="sdk", purpose=purpose)


def to_onnx(source: Source, path: Path) -> None:
    """Write the fp32 ONNX model of a ``torch.export`` program, inputs and outputs named as the source's."""
    torch = _torch("to export PyTorch models")
    args = tuple(torch.from_numpy(a) for a in example_feeds(source, batch=2))
    _onnx_export(torch, source.program, args, source, path, "torch.onnx.export")


def to_tflite(source: Source, path: Path) -> None:
    """Write the fp32 TFLite model of a ``torch.export`` program (batch 1, the format's)."""
    with quiet():  # litert-torch logs C++ banners and optional-kernel failures on import
        litert_torch = need("litert_torch", extra="sdk", purpose="to export TFLite models")
        torch = _torch("to export TFLite models")
    args = tuple(torch.from_numpy(a) for a in example_feeds(source, batch=1))
    with converting("litert-torch conversion"):
        edge_model = litert_torch.convert(source.module(), args)
        edge_model.export(str(path))


def qat_to_onnx(source: Source, path: Path) -> None:
    """Write a QAT graph as ONNX QDQ: int8 weights stored with their scales, activations as Q/DQ pairs."""
    torch = _torch("to export quantization-aware models")
    pt2e = need("torchao.quantization.pt2e.quantize_pt2e", extra="sdk", purpose="to export QAT models")
    args = tuple(torch.from_numpy(a) for a in example_feeds(source, batch=2))
    with source.patterns(), converting("preparing the QAT graph for ONNX"):
        converted = pt2e.convert_pt2e(copy.deepcopy(source.prepared), fold_quantize=True)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(converted, args, dynamic_shapes=tuple({0: batch} for _ in args))
    _onnx_export(torch, program, args, source, path, "exporting the QAT model to ONNX")


def qat_to_tflite(source: Source, path: Path) -> None:
    """Write a QAT graph as full-int8 TFLite: litert-torch lowers its quantize/dequantize pairs to int8 kernels."""
    with quiet():
        litert_torch = need("litert_torch", extra="sdk", purpose="to export TFLite models")
        from litert_torch.quantize.quant_config import QuantConfig
    torch = _torch("to export quantization-aware models")
    pt2e = need("torchao.quantization.pt2e.quantize_pt2e", extra="sdk", purpose="to export QAT models")
    args = tuple(torch.from_numpy(a) for a in example_feeds(source, batch=1))
    with source.patterns(), converting("converting the QAT model to TFLite"):
        converted = pt2e.convert_pt2e(copy.deepcopy(source.prepared), fold_quantize=False)
        edge = litert_torch.convert(converted, args, quant_config=QuantConfig(pt2e_quantizer=source.quantizer))
        edge.export(str(path))


def _onnx_export(torch: Any, program: Any, args: tuple[Any, ...], source: Source, path: Path, what: str) -> None:
    with converting(what):
        torch.onnx.export(program, args, str(path), input_names=[t.name for t in source.inputs],
                          output_names=[t.name for t in source.outputs], dynamo=True, external_data=False,
                          optimize=True, verbose=False)
