"""ONNX: quantize with ``onnxruntime.quantization``, read layers and I/O with onnxruntime (exporters: :mod:`.exporters`).

int8 is static QDQ with per-channel weights (the format TensorRT and onnxruntime's CPU
kernels both take); fp16 converts weights and compute with float inputs and outputs kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import need
from ..errors import ConversionError
from ..formats import FORMATS
from ..runtime.bundle.backends.onnx import session, tensor_spec
from ..runtime.bundle.tensors import TensorSpec
from .base import MAX_CALIBRATION_SAMPLES, Layer, Recipe, Samples, Source, Target, converting
from .onnx_graph import float_blocks
from .onnx_ranges import PROBE_SAMPLES, faithful_fp16, mixed_range_concats

# Layers whose weights int8 quantizes.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
# Calibration samples an fp16 model is checked against its fp32 self on (ranges, faithfulness).
FP16_PROBE_SAMPLES = 8
# Percentile calibration clips activation ranges at this percentile of |x|.
PERCENTILE = 99.99
FORMAT = FORMATS["onnx"]


class OnnxConverter:
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
        onnx = need("onnx", extra="sdk", purpose="to quantize ONNX models")
        quantization = need("onnxruntime.quantization", extra="sdk", purpose="to quantize ONNX models")
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if recipe.precision == "fp16":
            with converting("ONNX fp16 conversion"):
                used = calib.take(slice(0, FP16_PROBE_SAMPLES)) if calib is not None and len(calib) else None
                batches = list(used.batches(calibration_batch(source.inputs, used))) if used is not None else []
                model16, kept = faithful_fp16(onnx.load(str(fp32)), batches)
                onnx.save(model16, str(out))
            return {"tool": "onnxruntime.transformers.float16", "io": "float32", **kept}

        if recipe.precision != "int8" or recipe.mode not in FORMAT.modes:
            raise ConversionError(f"the ONNX converter cannot produce {recipe.label()}")
        if recipe.needs_calibration and (calib is None or len(calib) == 0):
            raise ConversionError("int8 needs calibration data: pass --calib")
        used = calib.take(slice(0, MAX_CALIBRATION_SAMPLES)) if calib is not None else None
        batch = calibration_batch(source.inputs, used)
        prepared = out.with_name(out.stem + ".pre.onnx")
        done: dict[str, object] = {"tool": f"onnxruntime.quantization.quantize_{recipe.mode}", "io": "float32"}
        try:
            with converting(f"ONNX {recipe.label()} quantization"):
                # (onnxruntime's pre-processing: shape inference and graph optimization; the
                # fp32 artifact was already normalized by export.)
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                if recipe.smoothing is not None:
                    smoothed = _smooth(prepared, used, batch, recipe.smoothing, skip=set(recipe.keep_float))
                    done["smoothing"] = f"SmoothQuant alpha {recipe.smoothing:g} on {smoothed} MatMul layers"
                split = recipe.mode == "static" and recipe.split_ranges and recipe.only is None
                graph = onnx.load(str(prepared)) if recipe.keep_float or split else None  # read once for both
                float_nodes = float_blocks(graph, recipe.keep_float) if recipe.keep_float else []
                selection = {
                    "nodes_to_exclude": float_nodes,
                    "nodes_to_quantize": list(recipe.only) if recipe.only is not None else None,
                }
                if recipe.mode == "dynamic":
                    quantization.quantize_dynamic(
                        str(prepared), str(out), weight_type=quantization.QuantType.QInt8, per_channel=True,
                        reduce_range=profile.int8_reduce_range, op_types_to_quantize=list(FORMAT.dynamic_ops),
                        **selection)
                    done.update(weights=_weights(profile), activations="int8, quantized at run time")
                else:
                    if split:
                        heads = mixed_range_concats(graph, used.take(slice(0, PROBE_SAMPLES)).batches(batch))
                        if heads:
                            selection["nodes_to_exclude"] += [n for h in heads for n in h.float_nodes]
                            done["float_heads"] = [h.describe() for h in heads]
                    done.update(_quantize_static(prepared, out, used, batch, recipe, profile, selection))
                done["weight_bits"] = 7 if profile.int8_reduce_range else 8
        finally:
            prepared.unlink(missing_ok=True)
        if used is not None and recipe.needs_calibration:
            done["calibration_samples"] = len(used)
        if recipe.keep_float:
            done["float_layers"] = list(recipe.keep_float)
        return done

    def layers(self, fp32: Path) -> list[Layer]:
        onnx = need("onnx", extra="sdk", purpose="to read ONNX models")
        from onnx import numpy_helper

        model = onnx.load(str(fp32))
        weights = {i.name: i for i in model.graph.initializer}
        found = []
        for node in model.graph.node:
            if node.op_type not in WEIGHT_OPS:
                continue
            w = next((weights[i] for i in node.input if i in weights and len(weights[i].dims) >= 2), None)
            if w is None or w.data_type != onnx.TensorProto.FLOAT:
                continue
            found.append(Layer(node.name, _display(node, w.name), node.op_type, int(numpy_helper.to_array(w).size)))
        return found

    def layer_errors(self, fp32: Path, quantized: Path, layers: list[Layer], samples: Samples, *,
                     threads: int = 1) -> dict[str, float]:
        """Per layer, the noise int8 puts on its weights and input activations over their signal power, from
        one run of the QDQ model ``quantized`` on ``samples`` (see :mod:`.onnx_debug`); empty for a model
        without quantize/dequantize pairs (dynamic int8)."""
        from .onnx_debug import layer_errors

        with converting("per-layer quantization noise"):
            return layer_errors(fp32, quantized, layers, samples.samples(), threads=threads)

    def io_specs(self, path: Path, source: Source) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        with converting(f"opening {path.name} with onnxruntime"):
            probe = session(path, exact_int8=False)  # only its inputs and outputs are read
        args = [*probe.get_inputs(), *probe.get_outputs()]
        specs = [tensor_spec(a) for a in args]
        for arg, spec in zip(args, specs):
            if spec is None:
                raise ConversionError(f"ONNX tensor {arg.name} has type {arg.type}, which edgec cannot feed")
        inputs, outputs = tuple(specs[:len(probe.get_inputs())]), tuple(specs[len(probe.get_inputs()):])
        want = [t.name for t in source.inputs]
        if [t.name for t in inputs] != want:
            raise ConversionError(
                f"exported ONNX inputs {[t.name for t in inputs]} do not match the model's {want}"
            )
        return inputs, outputs


def _display(node: Any, weight: str) -> str:
    """A readable layer name: the torch module its weight belongs to (``features.0.weight`` -> ``features.0``:
    the conv's own, even where a BatchNorm was folded into it), else the module scope torch.onnx recorded,
    else the node's name (other exporters)."""
    if weight.endswith(".weight") and len(weight) > len(".weight"):
        return weight[:-len(".weight")]
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
    parts = [x.strip(" '") for x in scopes.strip("[]").split(",") if x.strip(" '")]
    return parts[-2] if len(parts) >= 2 else node.name


def _quantize_static(
    prepared: Path, out: Path, used: Any, batch: int, recipe: Recipe, profile: Any, selection: dict[str, Any]
) -> dict[str, object]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # Histogram calibrators stack every batch's outputs into one array: batches must all
    # have the same size, so they get one sample at a time.
    size = batch if recipe.calibration == "minmax" else 1

    class Reader(CalibrationDataReader):
        """The batches, handed out a range at a time (onnxruntime's strided calibration)."""

        def __init__(self) -> None:
            self._count = -(-len(used) // size)
            self.set_range(0, self._count)

        def __len__(self) -> int:
            return self._count

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(used.take(slice(start_index * size, end_index * size)).batches(size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    # TensorRT takes symmetric int8 activations only; onnxruntime's CPU kernels take both.
    tensorrt = "TensorrtExecutionProvider" in profile.execution_providers
    extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True} if tensorrt else {}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.calibration]
    if recipe.calibration == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    # Streaming: ranges (or histograms) are merged after every batch and its activations
    # dropped, instead of onnxruntime keeping every intermediate tensor of every batch.
    extra["CalibStridedMinMax"] = 1
    qoperator = recipe.layout == "qoperator"
    # QOperator: uint8 activations with s8 weights (onnxruntime's u8s8 kernels); QDQ: s8s8.
    quantize_static(str(prepared), str(out), Reader(), per_channel=True,
                    quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
                    reduce_range=profile.int8_reduce_range, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
                    calibrate_method=method, extra_options=extra, **selection)
    calibration = recipe.calibration + (f" ({PERCENTILE}th percentile)" if recipe.calibration == "percentile" else "")
    activations = "uint8 per-tensor" if qoperator else "int8 per-tensor" + (" symmetric" if tensorrt else "")
    return {"format": "QOperator" if qoperator else "QDQ", "weights": _weights(profile), "activations": activations,
            "calibration": calibration}


def calibration_batch(inputs: Any, used: Any) -> int:
    """Samples per calibration batch: up to 16 with a dynamic batch axis, fewer for large samples."""
    if used is None or not all(t.shape[:1] == (None,) for t in inputs):
        return 1
    return used.batch_size(most=16)


def _weights(profile: Any) -> str:
    return "int8 per-channel symmetric" + (", 7-bit range (exact on x86 without VNNI)" if profile.int8_reduce_range else "")


def _smooth(path: Path, used: Any, batch: int, alpha: float, skip: set[str]) -> int:
    """SmoothQuant, in place: divide each MatMul input's channels by ``s`` and multiply the
    matching weight rows by ``s``, with ``s = max|x|^alpha / max|w|^(1 - alpha)``.

    The product is unchanged in float; int8 then sees activations without the few huge
    channels transformers are known for, at the price of slightly wider weights. MatMuls
    reading the same tensor (query, key, value) share one ``s`` and one ``Mul``; the division
    cannot be folded into the op before (a LayerNorm whose output also feeds the residual,
    or GELU). Returns the number of MatMul layers smoothed.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    weights = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for n in model.graph.node:
        w = weights.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) > 1 else None
        if w is not None and n.name not in skip and len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT:
            groups.setdefault(n.input[0], []).append(n)
    if not groups:
        return 0
    acts = list(groups)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None) for a in acts if a not in known)
    probing = session(probe.SerializeToString())
    amax: dict[str, np.ndarray] = {}
    for feeds in used.batches(batch):
        for name, value in zip(acts, probing.run(acts, feeds)):
            v = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax[name], v) if name in amax else v
    muls = []
    for act, nodes in groups.items():
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in mats], axis=0)
        s = np.clip(np.maximum(amax[act], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-2, 1e2)
        s = s.astype(np.float32)
        for n, w in zip(nodes, mats):
            weights[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
        scale, smoothed = f"{act}_smooth_scale", f"{act}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), scale))
        muls.append(helper.make_node("Mul", [act, scale], [smoothed], name=f"{act}_smooth"))
        for n in nodes:
            n.input[0] = smoothed
    # Each Mul goes right after the node producing its input (graph inputs: first).
    producers = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    order = sorted(range(len(muls)), key=lambda i: producers.get(muls[i].input[0], -1))
    nodes = list(model.graph.node)
    for i in reversed(order):
        nodes.insert(producers.get(muls[i].input[0], -1) + 1, muls[i])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return sum(len(v) for v in groups.values())


CONVERTER = OnnxConverter()
