"""Keras and TensorFlow models in: a real Keras CNN trained on the digits, as .keras, .h5 and a SavedModel."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")  # the `tf` extra; scripts/bootstrap.sh installs it
keras = pytest.importorskip("keras")
from typer.testing import CliRunner  # noqa: E402

from edgec.cli import app  # noqa: E402
from helpers.models import digits_images, train_keras  # noqa: E402

from edgec.converters import converter_for  # noqa: E402
from edgec.converters.base import Recipe  # noqa: E402
from edgec.devices import get_profile  # noqa: E402
from edgec.runtime.bundle.backends.tflite import interpreter_class  # noqa: E402
from edgec.runtime.bundle.model import load  # noqa: E402
from edgec.sdk.load.data import SampleSet  # noqa: E402
from edgec.sdk.load.models import load_model  # noqa: E402
from edgec.sdk.pipeline import convert  # noqa: E402
from edgec.sdk.verify.artifact import open_artifact  # noqa: E402

FAST = {"latency_budget_s": 0.05}


@dataclass
class Trained:
    root: Path
    model: object
    x_test: np.ndarray  # NHWC
    y_test: np.ndarray
    accuracy: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, verbose=0)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits) -> Trained:
    """A Keras CNN trained on the digits, saved as .keras, .h5 and a SavedModel, with calib/eval data."""
    model = train_keras(nhwc(digits.x_train), digits.y_train, epochs=12)
    root = tmp_path_factory.mktemp("keras")
    model.save(root / "digits.keras")
    model.save(root / "digits.h5")
    model.export(str(root / "saved"), verbose=False)
    x_test = nhwc(digits.x_test)
    np.savez(root / "calib.npz", image=nhwc(digits.x_calib), labels=digits.y_calib)
    np.savez(root / "eval.npz", image=x_test, labels=digits.y_test)
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == digits.y_test).mean())
    assert accuracy > 0.9, "the Keras CNN did not learn the digits"
    return Trained(root, model, x_test, digits.y_test, accuracy)


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def served(bundle: Path, x: np.ndarray) -> np.ndarray:
    """The bundle's logits on ``x``, through the runtime as a board runs it."""
    model = load(bundle)
    return model.predict({model.manifest.inputs[0].name: x})[model.manifest.outputs[0].name]


@pytest.mark.serial  # what ships is decided by measured speed: another worker's load would change it
def test_keras_file_converts_with_the_cli_to_a_verified_int8_tflite_bundle(trained, tmp_path):
    out = tmp_path / "rpi4"
    result = CliRunner().invoke(app, ["convert", str(trained.root / "digits.keras"), "--device", "rpi4", "--calib",
                                      str(trained.root / "calib.npz"), "--eval", str(trained.root / "eval.npz"),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"]["kind"] == "keras"
    assert report["target"]["format"] == "tflite" and report["target"]["precision"] == "int8"
    assert report["target"]["recipe"]["tool"] == "tf.lite.TFLiteConverter"
    assert report["target"]["recipe"]["recipe"] == "full-integer int8"
    assert report["verification"]["passed"] is True and report["versions"]["keras"]
    logits = served(out, trained.x_test)
    accuracy = (logits.argmax(1) == trained.y_test).mean()
    assert accuracy >= trained.accuracy - 0.01  # the default budget: at most 1 point of top-1
    assert cosine_min(logits, trained.logits(trained.x_test)) > 0.99


def test_coral_gets_a_full_integer_model_with_int8_inputs_and_outputs(trained, tmp_path):
    result = convert(trained.root / "digits.keras", device="coral", calib=trained.root / "calib.npz",
                     eval_data=trained.root / "eval.npz", out=tmp_path / "coral", **FAST)
    manifest = result.manifest
    assert manifest.precision == "int8" and result.report["target"]["recipe"]["io"] == "int8"
    assert manifest.inputs[0].dtype == "int8" and manifest.inputs[0].quantization is not None
    assert manifest.outputs[0].dtype == "int8"
    interpreter = interpreter_class()(model_path=str(tmp_path / "coral" / "model.tflite"))
    # Every tensor integer (int32 for biases and shapes): nothing left for the CPU to run in float.
    assert {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()} <= {"int8", "int32"}
    logits = served(tmp_path / "coral", trained.x_test)  # the runtime quantizes inputs and dequantizes outputs
    assert (logits.argmax(1) == trained.y_test).mean() >= trained.accuracy - 0.01


def test_h5_and_saved_model_load_as_the_keras_model_runs(trained):
    x = trained.x_test[:64]
    want = trained.logits(x)
    for name in ("digits.h5", "saved"):
        source = load_model(trained.root / name)
        assert source.kind == "keras" and source.inputs[0].shape == (None, 8, 8, 1)
        got = source.run({source.inputs[0].name: x})
        assert len(got) == 1 and np.allclose(got[0], want, atol=1e-5), name


def test_saved_model_converts_to_float16_with_the_tflite_converter(trained, tmp_path):
    result = convert(trained.root / "saved", device="rpi5", precision="fp16", out=tmp_path / "fp16",
                     calib=trained.root / "calib.npz", eval_data=trained.root / "eval.npz", **FAST)
    assert result.report["target"]["recipe"] == {"tool": "tf.lite.TFLiteConverter", "io": "float32",
                                                 "recipe": "float16 weights"}
    assert result.report["summary"]["size_vs_fp32"] < 0.6
    name = result.manifest.inputs[0].name  # the SavedModel signature's own input name
    model = load(result.bundle)
    logits = model.predict({name: trained.x_test})[result.manifest.outputs[0].name]
    assert cosine_min(logits, trained.logits(trained.x_test)) > 0.999


def test_onnx_through_tf2onnx_matches_keras_and_the_search_runs_on_it(trained, tmp_path):
    result = convert(trained.root / "digits.keras", device="x86-64", calib=trained.root / "calib.npz",
                     eval_data=trained.root / "eval.npz", out=tmp_path / "x86", **FAST)
    assert result.manifest.format == "onnx" and [t.name for t in result.manifest.inputs] == ["image"]
    # The fp32 ONNX tf2onnx wrote is the Keras model: that is what every candidate was measured against.
    rows = {r["name"]: r for r in result.report["results"]}
    assert rows["onnx fp32"]["fidelity"]["max_abs_error"] < 1e-4 and rows["onnx fp32"]["fidelity"]["top1_agreement"] == 1
    tried = {c["recipe"]["precision"] for c in result.report["search"]["candidates"] if c["status"] != "skipped"}
    assert "int8" in tried
    logits = served(result.bundle, trained.x_test)
    assert (logits.argmax(1) == trained.y_test).mean() >= trained.accuracy - 0.01


def test_recipes_the_tflite_converter_lacks_go_through_the_format_quantizer(trained, tmp_path):
    """Weight-only int8 and layers kept in float (mixed precision) on a Keras model's TFLite."""
    source = load_model(trained.root / "digits.keras")
    converter, profile = converter_for("tflite", "keras"), get_profile("rpi4")
    fp32 = tmp_path / "model.fp32.tflite"
    converter.export(source, fp32)
    layers = converter.layers(fp32)
    assert [layer.op for layer in layers] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    # Named after the Keras layers their weights belong to (what `edgec analyze` and the report show).
    assert [layer.display.rsplit("/", 1)[-1].rstrip("_0123456789") for layer in layers] == ["conv2d", "conv2d", "dense"]
    x = trained.x_test[:128]
    calib = SampleSet({"image": x})
    want = trained.logits(x)
    for recipe in (Recipe("int8", "weight-only"), Recipe("int8", "static", keep_float=(layers[0].name,))):
        out = tmp_path / f"{recipe.mode}.tflite"
        done = converter.quantize(fp32, out, recipe=recipe, source=source, calib=calib, profile=profile)
        assert done["tool"] == "ai-edge-quantizer"
        model = open_artifact(out, fmt="tflite", precision="int8", source=source, profile=profile, threads=1)
        got = model.predict({"image": x})[source.outputs[0].name]
        assert cosine_min(got, want) > 0.99, recipe.label()


def test_two_inputs_and_two_outputs_keep_their_names_in_tflite_and_onnx(digits, tmp_path):
    """Top and bottom halves of each digit in, the digit and its ink out: names must not swap."""
    keras.utils.set_random_seed(0)
    top, bottom = keras.Input((4, 8), name="top"), keras.Input((4, 8), name="bottom")
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([keras.layers.Flatten()(top),
                                                                               keras.layers.Flatten()(bottom)]))
    model = keras.Model([top, bottom], [keras.layers.Dense(10, name="digit")(h), keras.layers.Dense(1, name="ink")(h)])
    model.compile(optimizer="adam", loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"])

    def halves(x):
        return {"top": np.ascontiguousarray(x[:, 0, :4]), "bottom": np.ascontiguousarray(x[:, 0, 4:])}

    train = halves(digits.x_train)
    model.fit([train["top"], train["bottom"]], [digits.y_train, digits.x_train.mean(axis=(1, 2, 3))],
              epochs=5, verbose=0)
    model.save(tmp_path / "halves.keras")
    np.savez(tmp_path / "calib.npz", **halves(digits.x_calib))
    test = halves(digits.x_test)
    want = model.predict([test["top"], test["bottom"]], verbose=0)
    for device, fmt in (("rpi4", "tflite"), ("x86-64", "onnx")):
        result = convert(tmp_path / "halves.keras", device=device, format=fmt, precision="fp32",
                         calib=tmp_path / "calib.npz", out=tmp_path / fmt, **FAST)
        assert [t.name for t in result.manifest.inputs] == ["top", "bottom"]
        assert [t.name for t in result.manifest.outputs] == ["digit", "ink"]
        got = load(result.bundle).predict(test)
        assert np.allclose(got["digit"], want[0], atol=1e-4) and np.allclose(got["ink"], want[1], atol=1e-4), fmt


def test_dynamic_height_and_width_stay_dynamic_in_the_tflite_bundle(tmp_path):
    """A fully convolutional Keras model (None x None images) serves any size; its TFLite batch is fixed at 1."""
    keras.utils.set_random_seed(0)
    image = keras.Input((None, None, 3), name="image")
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image))
    model = keras.Model(image, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(h)))
    model.save(tmp_path / "fcn.keras")
    np.savez(tmp_path / "calib.npz", image=nhwc(digits_images(16, 48)))
    result = convert(tmp_path / "fcn.keras", device="rpi4", precision="fp32", calib=tmp_path / "calib.npz",
                     out=tmp_path / "b", **FAST)
    assert result.manifest.inputs[0].shape == (1, None, None, 3)
    bundle = load(result.bundle)
    for size in (16, 24):
        x = nhwc(digits_images(size, 6, offset=500))
        got = bundle.predict({"image": x})[result.manifest.outputs[0].name]
        assert np.allclose(got, model.predict(x, verbose=0), atol=1e-4), size


def _lambda_model(path: Path) -> Path:
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 2)]).save(path)
    return path


def _weights_only(path: Path) -> Path:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save_weights(path)
    return path


def _no_tf2onnx(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the package were not installed


BAD = {
    "Lambda layer (Python code)": (lambda t, mp: [_lambda_model(t / "lambda.keras")], "refusing to load lambda.keras"),
    "Lambda layer in .h5": (lambda t, mp: [_lambda_model(t / "lambda.h5")], "refusing to load lambda.h5"),
    "corrupt .keras": (lambda t, mp: [(t / "m.keras").write_bytes(b"junk") and t / "m.keras"], "not a Keras archive"),
    "corrupt .h5": (lambda t, mp: [(t / "m.h5").write_bytes(b"junk") and t / "m.h5"], "not an HDF5 file"),
    "weights only": (lambda t, mp: [_weights_only(t / "w.weights.h5")], "holds weights only"),
    "folder, not a SavedModel": (lambda t, mp: [t], "folder without saved_model.pb"),
    "no tf2onnx": (lambda t, mp: [_no_tf2onnx(mp), "KERAS", "--device", "x86-64", "--precision", "fp32"][1:],
                   "--format tflite"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_keras_input_is_one_line_exit_1_and_no_partial_bundle(trained, tmp_path, monkeypatch, case,
                                                                    no_leftovers):
    build, message = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    args = [str(trained.root / "digits.keras") if a == "KERAS" else str(a) for a in build(work, monkeypatch)]
    result = CliRunner().invoke(app, ["convert", *args, "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert no_leftovers(tmp_path, "bundle")
