"""ONNX: export with ``torch.onnx`` (dynamo), quantize with ``onnxruntime.quantization``.

int8 is static QDQ with per-channel weights (the format TensorRT and onnxruntime's CPU
kernels both take); fp16 converts weights and compute with float inputs and outputs kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, MissingDependencyError
from ..errors import first_line as _first_line
from ..runtime.manifest import TensorSpec
from .base import MAX_CALIBRATION_SAMPLES



class OnnxConverter:
    format = "onnx"

    def export(self, source: Any, path: Path) -> None:
        if source.kind == "onnx":
            shutil.copyfile(source.path, path)
            return
        try:
            import torch
        except ImportError:
            raise MissingDependencyError("torch", "sdk", "to export PyTorch models") from None
        from .._quiet import quiet

        args = tuple(
            torch.from_numpy(np.zeros(tuple(2 if d is None else d for d in t.shape), dtype=t.dtype))
            for t in source.inputs
        )
        log = None
        try:
            with quiet() as log:
                torch.onnx.export(
                    source.program,
                    args,
                    str(path),
                    input_names=[t.name for t in source.inputs],
                    output_names=[t.name for t in source.outputs],
                    dynamo=True,
                    external_data=False,
                    optimize=True,
                    verbose=False,
                )
        except Exception as exc:
            tail = f"\n{log.tail()}" if log and log.text else ""
            raise ConversionError(f"torch.onnx.export failed: {_first_line(exc)}{tail}") from None

    def quantize(
        self,
        fp32: Path,
        out: Path,
        *,
        precision: str,
        source: Any,
        calib: Any,
        profile: Any,
    ) -> dict[str, object]:
        try:
            import onnx
            from onnxruntime.quantization import (
                CalibrationDataReader,
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )
            from onnxruntime.quantization.shape_inference import quant_pre_process
        except ImportError:
            raise MissingDependencyError("onnxruntime", "sdk", "to quantize ONNX models") from None
        from .._quiet import quiet

        if precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            try:
                with quiet():
                    model16 = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
                    onnx.save(model16, str(out))
            except Exception as exc:
                raise ConversionError(f"ONNX fp16 conversion failed: {_first_line(exc)}") from None
            return {"tool": "onnxruntime.transformers.float16", "io": "float32"}

        if precision != "int8":
            raise ConversionError(f"ONNX converter cannot produce precision {precision!r}")
        if calib is None or len(calib) == 0:
            raise ConversionError("int8 needs calibration data: pass --calib")
        dynamic_batch = all(t.shape[:1] == (None,) for t in source.inputs)
        batch = 16 if dynamic_batch else 1
        used = calib.take(slice(0, MAX_CALIBRATION_SAMPLES))

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(used.batches(batch))

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        # TensorRT takes symmetric int8 activations only; onnxruntime's CPU kernels take both.
        tensorrt = "TensorrtExecutionProvider" in profile.execution_providers
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if tensorrt else {}
        prepared = out.with_name(out.stem + ".pre.onnx")
        log = None
        try:
            with quiet() as log:
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                quantize_static(
                    str(prepared),
                    str(out),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options=extra,
                )
        except Exception as exc:
            tail = f"\n{log.tail()}" if log and log.text else ""
            raise ConversionError(f"ONNX int8 quantization failed: {_first_line(exc)}{tail}") from None
        finally:
            prepared.unlink(missing_ok=True)
        return {
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "weights": "int8 per-channel symmetric",
            "activations": "int8 per-tensor" + (" symmetric" if tensorrt else ""),
            "calibration": "minmax",
            "calibration_samples": len(used),
            "io": "float32",
        }

    def io_specs(self, path: Path, source: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        from ..sdk.models import _onnx_spec

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = tuple(_onnx_spec(i) for i in session.get_inputs())
        outputs = tuple(_onnx_spec(o) for o in session.get_outputs())
        want = [t.name for t in source.inputs]
        if [t.name for t in inputs] != want:
            raise ConversionError(
                f"exported ONNX inputs {[t.name for t in inputs]} do not match the model's {want}"
            )
        return inputs, outputs


CONVERTER = OnnxConverter()
