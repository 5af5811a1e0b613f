"""Quantization-aware training (PT2E) on the digits CNN through `edgec qat`: learned scales survive into
both formats, each artifact is measured through the runtime, and bad input is one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from edgec.cli import app  # noqa: E402

pytestmark = pytest.mark.slow  # fine-tuning with fake quantization, then two exports
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights(digits_model, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("qat-weights") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def trained(digits, digits_model, tmp_path_factory):
    """Through the Python API with the verbs' shape: a config, an option overriding it, a progress.
    (`edgec qat` itself runs in docs/compress.md, and its refusals below.)"""
    import copy

    import edgec

    seen = []

    class Recording(edgec.Progress):
        def advance(self, done, total, what=""):
            seen.append((done, total, what))

    root = tmp_path_factory.mktemp("qat")
    out = root / "out"
    np.savez(root / "train.npz", x=digits.x_train, labels=digits.y_train)
    result = edgec.qat(copy.deepcopy(digits_model), edgec.QATConfig(epochs=2, lr=1e-3), data=root / "train.npz",
                       eval_data=(digits.x_test, digits.y_test), out=out, epochs=1, progress=Recording())
    report = json.loads((out / "qat.json").read_text())
    return SimpleNamespace(root=root, out=out, result=result, report=report, seen=seen,
                           onnx=out / "model.qat.onnx", tflite=out / "model.qat.tflite")


def test_qat_keeps_accuracy_and_exports_int8(trained, torch_accuracy):
    # The fake-quantized model and both int8 artifacts (run through the edgec runtime)
    # stay within a point of the float model on the 450 test digits.
    accuracy = trained.report["accuracy"]
    for key in ("after", "onnx", "tflite"):
        assert accuracy[key] >= torch_accuracy - 0.01, (key, accuracy)
    assert len(trained.report["loss"]) == 1 and trained.seen == [(1, 1, "epochs")]  # epochs=1 overrode the config
    assert trained.result.onnx == trained.onnx.resolve() and trained.result.accuracy == accuracy
    assert "fake-quantized, after training" in (trained.out / "qat.md").read_text()
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
    learned = sorted(trained.report["scales"].values())
    assert onnx_scales and learned
    for scale in onnx_scales:
        assert min(abs(scale - s) / s for s in learned) < 1e-5, scale


def test_tflite_artifact_is_int8(trained):
    from edgec.runtime.bundle.backends.tflite import interpreter_class

    interpreter = interpreter_class()(model_path=str(trained.tflite))
    dtypes = {d["dtype"].__name__ for d in interpreter.get_tensor_details()}
    assert "int8" in dtypes
    assert trained.tflite.stat().st_size < 0.35 * 4 * 97_000  # ~97k weights: int8, not fp32


def test_an_existing_out_is_refused_before_training_and_left_alone(trained, weights):
    before = sorted(p.name for p in trained.out.iterdir())
    result = invoke("qat", "edgec.sdk.examples.zoo:digits_cnn", "--weights", weights, "--data",
                    trained.root / "train.npz", "--out", trained.out)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: output folder {trained.out} already exists: pass --force "
                                                  "to replace it, or choose another --out"]
    assert sorted(p.name for p in trained.out.iterdir()) == before


@pytest.mark.parametrize("args, message", [
    (["--format", "coreml"], "QAT formats must be onnx and/or tflite, got coreml"),
    (["--epochs", "0"], "epochs must be at least 1, got 0"),
    (["--optimizer", "lion"], "unknown optimizer 'lion'"),
    (["--train-device", "tpu"], "--train-device 'tpu' is not one of auto, cpu, cuda"),
])
def test_bad_settings_are_one_line_and_write_nothing(trained, weights, tmp_path, args, message):
    out = tmp_path / "never"
    result = invoke("qat", "edgec.sdk.examples.zoo:digits_cnn", "--weights", weights, "--data",
                    trained.root / "train.npz", "--out", out, *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_training_on_a_gpu_torch_does_not_see_is_refused_before_any_work(trained, weights, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here: tests/sdk/test_training_device.py trains on it")
    out = tmp_path / "never"
    result = invoke("qat", "edgec.sdk.examples.zoo:digits_cnn", "--weights", weights, "--data",
                    trained.root / "train.npz", "--out", out, "--train-device", "cuda")
    assert result.exit_code == 1 and "sees no CUDA device" in result.output, result.output
    assert not out.exists()


def test_the_report_says_where_it_trained(trained):
    import torch

    want = "cpu" if not torch.cuda.is_available() else "cuda:0"
    assert trained.report["trained_on"].startswith(want)  # (auto: the GPU when torch sees one)
    assert f"epoch(s) on {trained.report['trained_on']}" in (trained.out / "qat.md").read_text()
