"""TFLite: quantize with ``ai-edge-quantizer``, read layers and I/O with the TFLite interpreter.

Models reach TFLite through the exporters of their kind (:mod:`.exporters`): litert-torch for
PyTorch, ``tf.lite.TFLiteConverter`` for Keras and TensorFlow (which also makes their plain
int8, dynamic-range and float16 models itself).

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

from .._optional import need
from .._quiet import quiet
from ..errors import ConversionError
from ..formats import FORMATS
from ..runtime.bundle.backends.tflite import interpreter_class
from ..runtime.bundle.tensors import Quantization, TensorSpec
from .base import MAX_CALIBRATION_SAMPLES, RANGE_RATIO, Layer, Recipe, Samples, Source, Target, converting

# Ops whose constant weights int8 quantizes.
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE", "BATCH_MATMUL",
              "EMBEDDING_LOOKUP", "GATHER")

# torch module classes that hold the weights of those ops (as _module_path writes them: "0 (Conv2d)").
WEIGHT_MODULES = tuple(f"({c})" for c in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                                           "Linear", "Embedding", "Bilinear", "MultiheadAttention"))
_ARG = re.compile(r"^args_(\d+)$")
_OUT = re.compile(r"^output_(\d+)$")
FORMAT = FORMATS["tflite"]

def _ordered(names: list[str], pattern: re.Pattern[str]) -> list[str]:
    """Signature names in positional order (``args_10`` after ``args_9``)."""
    def key(name: str) -> tuple[int, str]:
        m = pattern.match(name)
        return (int(m.group(1)) if m else 1 << 30, name)

    return sorted(names, key=key)


def _signature(path: Path, source: Source) -> tuple[Any, list[str], list[str]]:
    """The signature runner and its input and output names in the source's order.

    Signatures TensorFlow writes name inputs as the source does (``image``) and outputs as the
    source does or as Keras' export does (``output_0``: the source's ``signature_outputs``);
    litert-torch's are positional (``args_0``, ``output_0``).
    """
    interpreter = interpreter_class()(model_path=str(path))
    sigs = interpreter.get_signature_list()
    if not sigs:
        raise ConversionError(f"{path.name} has no signature to run it by")
    key = next(iter(sigs))
    runner = interpreter.get_signature_runner(key)
    ins, outs = list(sigs[key]["inputs"]), list(sigs[key]["outputs"])
    named_outs = list(getattr(source, "signature_outputs", ()) or [t.name for t in source.outputs])
    return (runner, _by_name(ins, [t.name for t in source.inputs]) or _ordered(ins, _ARG),
            _by_name(outs, named_outs) or _ordered(outs, _OUT))


def _by_name(names: list[str], wanted: list[str]) -> list[str]:
    """``wanted`` when the signature has exactly those names (so in the source's order), else ``[]``."""
    return wanted if sorted(wanted) == sorted(names) else []


class TFLiteConverter:
    format = FORMAT.name

    def quantize(
        self,
        fp32: Path,
        out: Path,
        *,
        recipe: Recipe,
        source: Source,
        calib: Samples | None,
        profile: Target,
    ) -> dict[str, object]:
        with quiet():
            aeq = need("ai_edge_quantizer", extra="sdk", purpose="to quantize TFLite models")
            from ai_edge_quantizer import qtyping
            from ai_edge_quantizer.algorithm_manager import AlgorithmName

        quantizer = aeq.Quantizer(str(fp32))
        every = qtyping.TFLOperationName.ALL_SUPPORTED
        if recipe.precision == "fp16":
            quantizer.add_weight_only_config(".*", every, 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
            done: dict[str, object] = {"tool": "ai-edge-quantizer", "recipe": "weight-only float16", "io": "float32"}
        elif (recipe.precision == "int8" and recipe.mode in FORMAT.modes and recipe.calibration in FORMAT.calibrations
              and (recipe.smoothing is None or FORMAT.smoothing)):
            if recipe.needs_calibration and (calib is None or len(calib) == 0):
                raise ConversionError("int8 needs calibration data: pass --calib")
            add = {
                "static": lambda rx: quantizer.add_static_config(rx, every, 8, 8),
                "dynamic": lambda rx: quantizer.add_dynamic_config(rx, every, 8),
                "weight-only": lambda rx: quantizer.add_weight_only_config(rx, every, 8),
            }[recipe.mode]
            for rx in [".*"] if recipe.only is None else [_exact(name) for name in recipe.only]:
                add(rx)
            for name in recipe.keep_float:
                quantizer.update_quantization_recipe(_exact(name), every, algorithm_key=AlgorithmName.NO_QUANTIZE)
            if recipe.mode == "static" and not profile.int8_io:
                # Keep float at the graph edges: the model quantizes its own input and
                # dequantizes its output, so callers on the board feed floats directly.
                for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                    quantizer.update_quantization_recipe(".*", io, algorithm_key=AlgorithmName.NO_QUANTIZE)
            done = {
                "tool": "ai-edge-quantizer",
                "recipe": {"static": "static_wi8_ai8", "dynamic": "dynamic_wi8_afp32",
                           "weight-only": "weight_only_wi8_afp32"}[recipe.mode],
                "weights": "int8 per-channel symmetric",
                "activations": {"static": "int8 per-tensor", "dynamic": "int8, quantized at run time",
                                "weight-only": "float"}[recipe.mode],
                "io": "int8" if recipe.mode == "static" and profile.int8_io else "float32",
            }
        else:
            raise ConversionError(f"the TFLite converter cannot produce {recipe.label()}")
        if recipe.keep_float:
            done["float_layers"] = list(recipe.keep_float)
        with converting(f"TFLite {recipe.label()} quantization"), warnings.catch_warnings():
            # Calibration keeps every intermediate tensor on purpose, and warns about it.
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            calibration = None
            if recipe.needs_calibration:
                used = calib.take(slice(0, MAX_CALIBRATION_SAMPLES))
                calibration = _calibrate_min_max(fp32, quantizer.get_quantization_recipe(),
                                                 _signature_data(fp32, source, used))
                done.update(calibration="minmax (true running min/max over every sample)",
                            calibration_samples=len(used))
                if recipe.mode == "static" and recipe.split_ranges and recipe.only is None:
                    heads = _mixed_concats(fp32, calibration)
                    for scopes, _ in heads:
                        for scope in scopes:
                            quantizer.update_quantization_recipe(_exact(scope), every,
                                                                 algorithm_key=AlgorithmName.NO_QUANTIZE)
                    if heads:
                        done["float_heads"] = [
                            f"{_module_path(scopes[0])}: parts differ {ratio:.0f}x in range, kept float"
                            + (f" with the {len(scopes) - 1} weightless op(s) after it" if len(scopes) > 1 else "")
                            for scopes, ratio in heads]
            quantizer.quantize(calibration, enable_progress_report=False).export_model(str(out), overwrite=True)
        return done

    def layers(self, fp32: Path) -> list[Layer]:
        with quiet():
            from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb
        model = fb.read_model(str(fp32))
        graph = model.subgraphs[0]
        found = []
        for index, op in enumerate(graph.operators):
            try:
                op_name = fb.get_op_name_by_index(model, 0, index)
            except KeyError:  # an op the quantizer has no name for: it cannot quantize it either
                continue
            if op_name not in WEIGHT_OPS:
                continue
            weights = [graph.tensors[i] for i in op.inputs
                       if i >= 0 and len(graph.tensors[i].shape) >= 2 and model.buffers[graph.tensors[i].buffer].data is not None]
            if not weights:
                continue
            biggest = max(weights, key=lambda t: int(np.prod(t.shape)))
            scope = fb.get_op_scope(op, graph.tensors)
            op = str(getattr(op_name, "value", op_name))  # CONV_2D, not TFLOperationName.CONV_2D
            found.append(Layer(scope, _display(scope, _text(biggest.name)), op, int(np.prod(biggest.shape))))
        return found

    def io_specs(self, path: Path, source: Source) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        runner, arg_names, out_names = _signature(path, source)
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        if len(arg_names) != len(source.inputs) or len(out_names) != len(source.outputs):
            raise ConversionError(
                f"TFLite signature has {len(arg_names)} inputs / {len(out_names)} outputs, "
                f"the model {len(source.inputs)} / {len(source.outputs)}"
            )
        inputs = tuple(_spec(t.name, arg, in_details[arg]) for t, arg in zip(source.inputs, arg_names))
        outputs = tuple(_spec(t.name, name, out_details[name]) for t, name in zip(source.outputs, out_names))
        return inputs, outputs


def _mixed_concats(fp32: Path, qsvs: Any) -> list[tuple[list[str], float]]:
    """CONCATENATION ops whose inputs' calibrated ranges differ over :data:`~.base.RANGE_RATIO`, each with the
    scopes of the weightless ops after it: ``[(scopes, ratio)]`` (see :mod:`.onnx_ranges`)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(str(fp32))
    graph = model.subgraphs[0]
    names = {}
    for index in range(len(graph.operators)):
        try:
            names[index] = str(fb.get_op_name_by_index(model, 0, index)).rsplit(".", 1)[-1]
        except KeyError:
            names[index] = ""
    readers: dict[int, list[int]] = {}
    for index, op in enumerate(graph.operators):
        for t in op.inputs:
            readers.setdefault(int(t), []).append(index)

    def peak(tensor: int) -> float | None:
        qsv = qsvs.get(_text(graph.tensors[tensor].name)) if tensor >= 0 else None
        if not qsv:
            return None
        return float(max(np.abs(np.asarray(qsv["min"])).max(), np.abs(np.asarray(qsv["max"])).max()))

    found = []
    for index, op in enumerate(graph.operators):
        if names[index] != "CONCATENATION":
            continue
        parts = [p for p in (peak(int(t)) for t in op.inputs) if p]
        if len(parts) < 2 or max(parts) / min(parts) < RANGE_RATIO:
            continue
        scopes, todo, seen = [fb.get_op_scope(op, graph.tensors)], [int(t) for t in op.outputs], {index}
        while todo:
            for reader in readers.get(todo.pop(), []):
                if reader in seen or names[reader] in WEIGHT_OPS:
                    continue
                seen.add(reader)
                scopes.append(fb.get_op_scope(graph.operators[reader], graph.tensors))
                todo.extend(int(t) for t in graph.operators[reader].outputs)
        found.append((scopes, max(parts) / min(parts)))
    return found


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


def _signature_data(fp32: Path, source: Any, used: Any) -> list[dict[str, np.ndarray]]:
    """Samples keyed by the TFLite signature's argument names, in the dtypes it takes."""
    _, arg_names, _ = _signature(fp32, source)
    return [
        {arg: sample[t.name].astype(np.float32) if t.dtype.startswith("float") else sample[t.name].astype(np.int32)
         for arg, t in zip(arg_names, source.inputs)}
        for sample in used.samples()
    ]


def _exact(scope: str) -> str:
    """A recipe regex that selects exactly the op with this scope."""
    return f"^{re.escape(scope)}$"


def _text(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _display(scope: str, weight: str) -> str:
    """A readable layer name: the torch module that holds the weights (litert-torch fuses a conv with the
    BatchNorm and ReLU after it and names the op after the last: the conv is the one shown), else the
    Keras layer its weights belong to (``sequential/dense_1/MatMul`` -> ``sequential/dense_1``), else the scope."""
    for part in [*scope.split(";"), *weight.split(";")]:
        path = _module_path(part)
        if path.endswith(WEIGHT_MODULES):
            return path
    torch_path = _module_path(scope)
    if torch_path != scope.split(";")[0]:
        return torch_path
    if "/" in weight:
        return weight.rsplit("/", 1)[0]
    return torch_path


def _module_path(scope: str) -> str:
    """``pkg.Model/x.Encoder_encoder/x.Linear_dense;`` -> ``encoder.dense (Linear)``: the torch module
    path of the op's output (for fused ops, the last module fused: ``2 (ReLU)``)."""
    first = scope.split(";")[0]
    attrs, last = [], ""
    for segment in first.split("/"):
        if "." not in segment:  # not a litert-torch module segment (TensorFlow names layers plainly)
            continue
        cls = segment.rsplit(".", 1)[-1]
        if "_" in cls:
            last, attr = cls.split("_", 1)
            attrs.append(attr)
    return f"{'.'.join(attrs)} ({last})" if attrs and last else first


def _spec(name: str, tensor: str, detail: dict[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quant = Quantization(float(scale), int(zero_point)) if dtype in ("int8", "uint8", "int16") and scale else None
    # shape_signature keeps the dimensions the model leaves dynamic (-1), which shape shows as 1.
    dims = detail.get("shape_signature")
    dims = detail["shape"] if dims is None or len(dims) != len(detail["shape"]) else dims
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(name=name, shape=shape, dtype=dtype, quantization=quant, tensor=tensor)


CONVERTER = TFLiteConverter()
