"""Keras and TensorFlow models: to TFLite through ``tf.lite.TFLiteConverter``, to ONNX through ``tf2onnx``.

The TFLite converter quantizes as TensorFlow users know it: full-integer int8 calibrated on a
representative dataset (``--calib``), with int8 inputs and outputs where the board runs only
integer models (Coral's Edge TPU); dynamic-range int8; float16 weights. What it cannot make
(weight-only int8, layers kept in float) the TFLite format's own quantizer makes from the fp32
flatbuffer written here, so the accuracy-budget search is the one PyTorch models get.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..._optional import need
from ..._quiet import quiet
from ...errors import ConversionError, MissingDependencyError
from ..base import MAX_CALIBRATION_SAMPLES, Recipe, Samples, Source, Target, converting

# tf2onnx's opset: 17 has every op a Keras CNN or transformer exports to, and onnxruntime's
# quantizer handles it.
ONNX_OPSET = 17


def tensorflow() -> Any:
    """``tensorflow``, imported quietly (no C++ banners), or an error naming the ``tf`` extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet():
        return need("tensorflow", extra="tf", purpose="to load and convert Keras and TensorFlow models")


@contextlib.contextmanager
def tflite_converter(source: Source) -> Iterator[Any]:
    """A fresh ``tf.lite.TFLiteConverter`` for the source, its batch fixed at 1 (the format's batch).

    A fixed batch is what the Edge TPU compiler and NPU delegates take; other dynamic
    dimensions stay dynamic. The model goes through a SavedModel in a temporary folder,
    signed with the source's own input and output names, so TFLite's signature names them too.
    """
    tf = tensorflow()
    specs = [tf.TensorSpec((1, *t.shape[1:]), t.dtype, name=t.name) for t in source.inputs]
    with tempfile.TemporaryDirectory(prefix="edgec-tf-") as tmp:
        with converting("preparing the model for TFLiteConverter"):
            if getattr(source, "model", None) is not None:
                # Keras' own export tracks the model's variables (so TFLite's calibrator can run it).
                source.model.export(tmp, format="tf_saved_model", verbose=False,
                                    input_signature=[specs if len(specs) > 1 else specs[0]])
            else:
                module = tf.Module()
                module.loaded = source.loaded  # tracks the SavedModel's variables

                def serve(*args: Any) -> dict[str, Any]:
                    return dict(zip((t.name for t in source.outputs), source.function(*args)))

                signature = tf.function(serve, input_signature=specs).get_concrete_function()
                tf.saved_model.save(module, tmp, signatures={"serving_default": signature})
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        yield converter


def to_tflite(source: Source, path: Path) -> None:
    """Write the fp32 TFLite model of a Keras/TensorFlow source."""
    with tflite_converter(source) as converter, converting("tf.lite.TFLiteConverter"):
        path.write_bytes(converter.convert())


def plain(recipe: Recipe) -> bool:
    """Whether TFLiteConverter makes ``recipe`` itself (the rest goes through the format's quantizer)."""
    if recipe.keep_float or recipe.only is not None or recipe.smoothing is not None:
        return False
    return recipe.precision == "fp16" or (recipe.precision == "int8" and recipe.mode in ("static", "dynamic"))


def quantize_tflite(fp32: Path, out: Path, *, recipe: Recipe, source: Source, calib: Samples | None,
                    profile: Target) -> dict[str, object] | None:
    """Write ``source`` quantized by ``recipe`` with TFLiteConverter's own post-training quantization;
    ``None`` for a recipe it does not make (the TFLite format's quantizer then makes it from ``fp32``)."""
    if not plain(recipe):
        return None
    tf = tensorflow()
    with tflite_converter(source) as converter:
        return _quantize(converter, tf, out, recipe=recipe, source=source, calib=calib, profile=profile)


def _quantize(converter: Any, tf: Any, out: Path, *, recipe: Recipe, source: Source, calib: Samples | None,
              profile: Target) -> dict[str, object]:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    done: dict[str, object] = {"tool": "tf.lite.TFLiteConverter", "io": "float32"}
    if recipe.precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
        done["recipe"] = "float16 weights"
    elif recipe.mode == "dynamic":
        done.update(recipe="dynamic range", weights="int8 per-channel symmetric",
                    activations="float, int8 at run time where the op has a hybrid kernel")
    else:
        if calib is None or len(calib) == 0:
            raise ConversionError("int8 needs calibration data: pass --calib")
        used = calib.take(slice(0, MAX_CALIBRATION_SAMPLES))

        def representative() -> Any:  # keyed by the signature's input names: the source's own
            for sample in used.samples():
                yield {t.name: sample[t.name].astype(t.dtype) for t in source.inputs}

        converter.representative_dataset = representative
        done.update(recipe="full-integer int8", weights="int8 per-channel symmetric",
                    activations="int8 per-tensor", calibration="minmax (TFLite calibrator)",
                    calibration_samples=len(used))
        if profile.int8_io:
            # Every op integer and int8 at the edges: what the Edge TPU compiler takes.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            done["io"] = "int8"
    with converting(f"TFLiteConverter {recipe.label()} quantization"), warnings.catch_warnings():
        # int8 I/O makes TensorFlow warn that no input statistics were given: the calibration has them.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")  # its calibrator's own
        out.write_bytes(converter.convert())
    return done


def to_onnx(source: Source, path: Path) -> None:
    """Write an fp32 ONNX model of a Keras/TensorFlow source with tf2onnx, inputs and outputs named as the source's.

    Raises:
        ConversionError: tf2onnx is missing or cannot convert this model; the message names the TFLite path.
    """
    tensorflow()
    try:
        with quiet():
            tf2onnx = need("tf2onnx", extra="tf", purpose="to export Keras models to ONNX")
    except MissingDependencyError as exc:
        raise ConversionError(f"{exc}; or convert the model to TFLite instead: --format tflite") from None
    onnx = need("onnx", extra="sdk", purpose="to write ONNX models")
    with converting("tf2onnx conversion (the TFLite path, --format tflite, does not need it)"):
        model, _ = tf2onnx.convert.from_function(source.function, input_signature=source.function.input_signature,
                                                 opset=ONNX_OPSET)
    graph = model.graph
    if len(graph.output) != len(source.outputs):
        raise ConversionError(f"tf2onnx wrote {len(graph.output)} outputs for a model with {len(source.outputs)}: "
                              "convert it to TFLite instead (--format tflite)")
    renames = {out.name: spec.name for out, spec in zip(graph.output, source.outputs)}
    for node in graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for out in graph.output:
        out.name = renames[out.name]
    with converting("checking the tf2onnx model"):
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
