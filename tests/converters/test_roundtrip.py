"""convert -> load bundle -> predict, for every format and precision, on real digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgec
import edgec.devices
from edgec.runtime.bundle.manifest import read_manifest, sha256_file
from edgec.runtime.bundle.probe import probe

CASES = [(f, p) for f in ("onnx", "tflite") for p in ("fp32", "fp16", "int8")]


@pytest.mark.parametrize(("fmt", "precision"), CASES)
def test_bundle_predicts_the_test_digits_like_the_original(bundles, digits, torch_accuracy, fmt, precision):
    result = bundles(fmt, precision)
    model = edgec.load(result.bundle)
    logits = model.predict(digits.x_test)["output"]
    assert logits.dtype == np.float32 and logits.shape == (len(digits.x_test), 10)
    accuracy = float((logits.argmax(1) == digits.y_test).mean())
    allowed_drop = 1.0 if precision == "int8" else 0.25  # points of top-1
    assert 100 * (torch_accuracy - accuracy) <= allowed_drop, (torch_accuracy, accuracy)
    assert result.report["verification"]["passed"]


@pytest.mark.parametrize(("fmt", "precision"), CASES)
def test_manifest_describes_the_artifact(bundles, fmt, precision):
    bundle = bundles(fmt, precision).bundle
    manifest = read_manifest(bundle)
    assert (manifest.format, manifest.precision) == (fmt, precision)
    assert [t.name for t in manifest.inputs] == ["input"] and [t.name for t in manifest.outputs] == ["output"]
    assert manifest.inputs[0].shape[1:] == (1, 8, 8)
    assert set(manifest.files) == {f"model.{fmt}", "golden.npz", "drift.json", "report.json", "report.md"}
    for name, digest in manifest.files.items():
        assert sha256_file(bundle / name) == digest
    assert manifest.versions["edgec"] == edgec.__version__
    assert ("onnxruntime" if fmt == "onnx" else "litert-torch") in manifest.versions
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*manifest.files, "manifest.json"])
    # The golden samples: held-out inputs and this runtime's answers, which a board must reproduce.
    with np.load(bundle / "golden.npz") as golden:
        assert golden["input_0"].shape == (8, 1, 8, 8) and golden["output_0"].shape == (8, 10)
    assert "golden sample(s) give the host's answers" in probe(bundle)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_is_at_most_30_percent_of_fp32(bundles, fmt):
    fp32 = bundles(fmt, "fp32").manifest.metrics["size_bytes"]
    int8 = bundles(fmt, "int8").manifest.metrics["size_bytes"]
    assert int8 <= 0.30 * fp32, (int8, fp32)
    assert bundles(fmt, "int8").report["summary"]["size_vs_fp32"] <= 0.30


def test_report_holds_measurements_for_every_row(bundles):
    report = json.loads((bundles("tflite", "int8").bundle / "report.json").read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["original (torch)", "tflite fp32", "tflite int8"]
    for row in report["results"]:
        assert row["size_bytes"] > 0 and row["latency"]["p50_ms"] > 0
    assert report["data"]["calibration_samples"] + report["data"]["holdout_samples"] == 269
    assert report["results"][-1]["fidelity"]["samples"] == report["data"]["holdout_samples"]
    markdown = (bundles("tflite", "int8").bundle / "report.md").read_text()
    assert "tflite int8 (shipped)" in markdown and "held-out samples" in markdown


def test_coral_bundle_has_int8_io_and_still_takes_floats(assets, digits, tmp_path, torch_accuracy):
    result = edgec.convert(assets / "model.pt2", device="coral", calib=assets / "calib.npz",
                           out=tmp_path / "coral", latency_budget_s=0.05)
    spec_in, spec_out = result.manifest.inputs[0], result.manifest.outputs[0]
    assert spec_in.dtype == "int8" and spec_in.quantization is not None
    assert spec_out.dtype == "int8" and spec_out.quantization is not None
    logits = edgec.load(result.bundle).predict({"input": digits.x_test})["output"]
    assert logits.dtype == np.float32
    assert 100 * (torch_accuracy - float((logits.argmax(1) == digits.y_test).mean())) <= 1.0


@pytest.mark.serial  # what ships is decided by measured speed: another worker's load would change it
def test_onnx_model_converts_to_onnx_int8(assets, digits, tmp_path, torch_accuracy):
    result = edgec.convert(assets / "model.onnx", device="x86-64", calib=assets / "calib.npz",
                           out=tmp_path / "from-onnx", latency_budget_s=0.05)
    assert result.manifest.precision == "int8"
    logits = edgec.load(result.bundle).predict(digits.x_test)["output"]
    assert 100 * (torch_accuracy - float((logits.argmax(1) == digits.y_test).mean())) <= 1.0


def test_jetson_family_name_converts_without_calibration(assets, tmp_path):
    result = edgec.convert(assets / "model.pt2", device="jetson", out=tmp_path / "jetson", latency_budget_s=0.05)
    assert result.manifest.device["name"] == "jetson-orin-nano"
    assert (result.manifest.format, result.manifest.precision) == ("onnx", "fp16")
    assert result.report["data"]["synthetic"] is True
    assert result.manifest.execution_providers[0] == "TensorrtExecutionProvider"
    assert "drift.json" not in result.manifest.files  # random inputs describe no deployment: nothing to drift from
    assert not (result.bundle / "drift.json").exists()


@pytest.mark.parametrize("reduce_range", [True, False])
def test_onnx_int8_is_exact_on_every_x86_cpu(assets, digits, tmp_path, torch_accuracy, reduce_range):
    """Full-range int8 weights saturate onnxruntime's u8s8 kernels on x86 without VNNI.

    The x86 profile quantizes weights to 7 bits (exact on the fast kernels); a bundle with
    full-range weights is run on the exact kernels. Either way the artifact must follow the
    original on whatever CPU runs this test.
    """
    text = (edgec.devices.PROFILES_DIR / "x86-64.toml").read_text()
    profile = tmp_path / "board.toml"
    profile.write_text(text.replace("int8_reduce_range = true", f"int8_reduce_range = {str(reduce_range).lower()}"))
    result = edgec.convert(assets / "model.pt2", device=str(profile), precision="int8", calib=assets / "calib.npz",
                           out=tmp_path / "b", latency_budget_s=0.05, min_cosine=0.99)
    assert result.manifest.weight_bits == (7 if reduce_range else 8)
    assert read_manifest(result.bundle).weight_bits == result.manifest.weight_bits
    logits = edgec.load(result.bundle).predict(digits.x_test)["output"]
    assert 100 * (torch_accuracy - float((logits.argmax(1) == digits.y_test).mean())) <= 1.0
