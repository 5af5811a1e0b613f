"""Quantization-aware training (PT2E) on the digits CNN: learned scales survive into both formats."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from edgec.sdk.quantize import qat  # noqa: E402

pytestmark = pytest.mark.slow  # fine-tuning with fake quantization, then two exports


@pytest.fixture(scope="module")
def trained(digits, digits_model, tmp_path_factory):
    import copy

    out = tmp_path_factory.mktemp("qat")
    result = qat(copy.deepcopy(digits_model), (digits.x_train, digits.y_train), out=out,
                 eval_data=(digits.x_test, digits.y_test), epochs=1, lr=1e-3)
    return result


def test_qat_keeps_accuracy_and_exports_int8(trained, torch_accuracy):
    # The fake-quantized model and both int8 artifacts (run through the edgec runtime)
    # stay within a point of the float model on the 450 test digits.
    for key in ("after", "onnx", "tflite"):
        assert trained.accuracy[key] >= torch_accuracy - 0.01, (key, trained.accuracy)
    assert len(trained.history.loss) == 1
    model = onnx.load(str(trained.onnx))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 4  # three convs and the head, stored as int8


def test_onnx_keeps_the_learned_activation_scales(trained):
    model = onnx.load(str(trained.onnx))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    values = {**inits, **consts}
    onnx_scales = sorted(float(values[n.input[1]]) for n in model.graph.node
                         if n.op_type == "QuantizeLinear" and n.input[1] in values and values[n.input[1]].size == 1)
    learned = sorted(trained.scales.values())
    assert onnx_scales and learned
    for scale in onnx_scales:
        assert min(abs(scale - s) / s for s in learned) < 1e-5, scale


def test_tflite_artifact_is_int8(trained):
    from edgec.runtime.bundle.backends.tflite import interpreter_class

    interpreter = interpreter_class()(model_path=str(trained.tflite))
    dtypes = {d["dtype"].__name__ for d in interpreter.get_tensor_details()}
    assert "int8" in dtypes
    assert trained.tflite.stat().st_size < 0.35 * 4 * 97_000  # ~97k weights: int8, not fp32
