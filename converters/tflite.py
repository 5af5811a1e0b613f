"""TFLite: export with ``litert-torch``, quantize with ``ai-edge-quantizer``.

int8 is full-integer static quantization (int8 weights per channel, int8 activations); the
model's I/O stays float unless the device profile asks for int8 I/O (Coral). fp16 stores
weights as float16 (TFLite's float16 quantization). Exported models take a batch of 1; the
runtime serves larger batches sample by sample.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, MissingDependencyError
from ..errors import first_line as _first_line
from ..runtime.manifest import Quantization, TensorSpec
from .base import MAX_CALIBRATION_SAMPLES

_ARG = re.compile(r"^args_(\d+)$")
_OUT = re.compile(r"^output_(\d+)$")



def _ordered(names: list[str], pattern: re.Pattern[str]) -> list[str]:
    """Signature names in positional order (``args_10`` after ``args_9``)."""
    def key(name: str) -> tuple[int, str]:
        m = pattern.match(name)
        return (int(m.group(1)) if m else 1 << 30, name)

    return sorted(names, key=key)


def _signature(path: Path) -> tuple[Any, list[str], list[str]]:
    from ..runtime.backends import _interpreter_class

    interpreter = _interpreter_class()(model_path=str(path))
    sigs = interpreter.get_signature_list()
    key = next(iter(sigs))
    runner = interpreter.get_signature_runner(key)
    return runner, _ordered(list(sigs[key]["inputs"]), _ARG), _ordered(list(sigs[key]["outputs"]), _OUT)


class TFLiteConverter:
    format = "tflite"

    def export(self, source: Any, path: Path) -> None:
        if source.kind != "torch":
            raise ConversionError(
                f"TFLite export takes PyTorch models (.pt2 or pkg.module:factory); {source.label} "
                "is ONNX: convert it with --format onnx, or export the PyTorch model to .pt2"
            )
        from .._quiet import quiet

        try:
            with quiet():  # litert-torch logs C++ banners and optional-kernel failures on import
                import litert_torch
                import torch
        except ImportError:
            raise MissingDependencyError("litert-torch", "sdk", "to export TFLite models") from None

        args = tuple(
            torch.from_numpy(np.zeros(tuple(1 if d is None else d for d in t.shape), dtype=t.dtype))
            for t in source.inputs
        )
        log = None
        try:
            with quiet() as log:
                edge_model = litert_torch.convert(source.module(), args)
                edge_model.export(str(path))
        except Exception as exc:
            tail = f"\n{log.tail()}" if log and log.text else ""
            raise ConversionError(f"litert-torch conversion failed: {_first_line(exc)}{tail}") from None

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
        from .._quiet import quiet

        try:
            with quiet():
                import ai_edge_quantizer as aeq
                from ai_edge_quantizer import qtyping, recipe
                from ai_edge_quantizer.algorithm_manager import AlgorithmName
        except ImportError:
            raise MissingDependencyError("ai-edge-quantizer", "sdk", "to quantize TFLite models") from None

        quantizer = aeq.Quantizer(str(fp32))
        log = None
        if precision == "fp16":
            quantizer.add_weight_only_config(
                ".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16, algorithm_key=AlgorithmName.FLOAT_CASTING
            )
            try:
                with quiet() as log:
                    quantizer.quantize(enable_progress_report=False).export_model(str(out), overwrite=True)
            except Exception as exc:
                tail = f"\n{log.tail()}" if log and log.text else ""
                raise ConversionError(f"TFLite fp16 conversion failed: {_first_line(exc)}{tail}") from None
            return {"tool": "ai-edge-quantizer", "recipe": "weight-only float16", "io": "float32"}

        if precision != "int8":
            raise ConversionError(f"TFLite converter cannot produce precision {precision!r}")
        if calib is None or len(calib) == 0:
            raise ConversionError("int8 needs calibration data: pass --calib")
        quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
        if not profile.int8_io:
            # Keep float at the graph edges: the model quantizes its own input and
            # dequantizes its output, so callers on the board feed floats directly.
            for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                quantizer.update_quantization_recipe(".*", io, algorithm_key=AlgorithmName.NO_QUANTIZE)
        _, arg_names, _ = _signature(fp32)
        used = calib.take(slice(0, MAX_CALIBRATION_SAMPLES))
        signature_data = [
            {arg: sample[t.name].astype(np.float32) if t.dtype.startswith("float") else sample[t.name].astype(np.int32)
             for arg, t in zip(arg_names, source.inputs)}
            for sample in used.samples()
        ]
        try:
            with quiet() as log, warnings.catch_warnings():
                # Calibration keeps every intermediate tensor on purpose, and warns about it.
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
                result = _calibrate_min_max(fp32, quantizer.get_quantization_recipe(), signature_data)
                quantizer.quantize(result, enable_progress_report=False).export_model(str(out), overwrite=True)
        except Exception as exc:
            tail = f"\n{log.tail()}" if log and log.text else ""
            raise ConversionError(f"TFLite int8 quantization failed: {_first_line(exc)}{tail}") from None
        return {
            "tool": "ai-edge-quantizer",
            "recipe": "static_wi8_ai8",
            "weights": "int8 per-channel symmetric",
            "activations": "int8 per-tensor",
            "calibration": "minmax (true running min/max over every sample)",
            "calibration_samples": len(used),
            "io": "int8" if profile.int8_io else "float32",
        }

    def io_specs(self, path: Path, source: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        runner, arg_names, out_names = _signature(path)
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        if len(arg_names) != len(source.inputs) or len(out_names) != len(source.outputs):
            raise ConversionError(
                f"TFLite signature has {len(arg_names)} inputs / {len(out_names)} outputs, "
                f"the model {len(source.inputs)} / {len(source.outputs)}"
            )
        inputs = tuple(_spec(t.name, arg, in_details[arg]) for t, arg in zip(source.inputs, arg_names))
        outputs = tuple(_spec(t.name, name, out_details[name]) for t, name in zip(source.outputs, out_names))
        return inputs, outputs


def _calibrate_min_max(fp32: Path, model_recipe: Any, samples: list[dict[str, np.ndarray]]) -> Any:
    """Calibrate with the running min and max over all samples.

    ai-edge-quantizer merges per-sample ranges with a moving average by default; fed one
    sample at a time (our TFLite models take a batch of 1) that converges to a typical
    sample's range, not the largest, and confident outputs then clip in int8.
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(model_recipe)
    calib = calibrator.Calibrator(fp32.read_bytes(), qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate({"serving_default": samples}, manager)
    return calib.get_model_qsvs()


def _spec(name: str, tensor: str, detail: dict[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quant = Quantization(float(scale), int(zero_point)) if dtype in ("int8", "uint8", "int16") and scale else None
    shape = tuple(int(d) for d in detail["shape"])
    return TensorSpec(name=name, shape=shape, dtype=dtype, quantization=quant, tensor=tensor)


CONVERTER = TFLiteConverter()
