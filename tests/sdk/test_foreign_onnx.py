"""ONNX models as other exporters write them: opset 12, Constant-node weights, dynamic batch/H/W."""

from __future__ import annotations


import numpy as np
import pytest
from helpers.models import conv_model, digits_images  # noqa: E402

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from edgec.converters import converter_for, onnx_graph  # noqa: E402
from edgec.sdk.pipeline import convert  # noqa: E402

FAST = {"latency_budget_s": 0.05}


@pytest.fixture
def foreign(tmp_path):
    conv_model(tmp_path / "foreign.onnx")
    np.savez(tmp_path / "calib.npz", image=digits_images(24, 96))
    np.savez(tmp_path / "eval.npz", image=digits_images(24, 64, offset=1000))
    return tmp_path


def test_normalize_moves_constants_raises_the_opset_and_layers_become_visible(foreign):
    raw = onnx.load(str(foreign / "foreign.onnx"))
    assert not raw.graph.initializer and sum(n.op_type == "Constant" for n in raw.graph.node) == 8
    assert converter_for("onnx").layers(foreign / "foreign.onnx") == []  # what the scan saw before
    done = onnx_graph.normalize(foreign / "foreign.onnx", foreign / "ready.onnx")
    assert done["constants_moved"] == 8 and done["opset"] == [12, 13] and not done["notes"]
    ready = onnx.load(str(foreign / "ready.onnx"))
    onnx.checker.check_model(ready, full_check=True)
    assert len(ready.graph.initializer) == 8 and not any(n.op_type == "Constant" for n in ready.graph.node)
    layers = converter_for("onnx").layers(foreign / "ready.onnx")
    assert sorted(layer.op for layer in layers) == ["Conv", "Conv", "Conv", "MatMul"]
    import onnxruntime as ort

    x = digits_images(40, 2)  # dynamic H/W: another size than calibration's
    before = ort.InferenceSession(str(foreign / "foreign.onnx")).run(None, {"image": x})[0]
    after = ort.InferenceSession(str(foreign / "ready.onnx")).run(None, {"image": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_a_foreign_model_converts_with_auto_to_a_verified_bundle(foreign):
    result = convert(foreign / "foreign.onnx", device="x86-64", precision="auto", calib=foreign / "calib.npz",
                     eval_data=foreign / "eval.npz", min_cosine=0.99, out=foreign / "bundle", **FAST)
    report = result.report
    assert report["model"]["prepared"]["summary"] == "8 Constant nodes made initializers; opset 12 raised to 13"
    candidates = {c["label"]: c for c in report["search"]["candidates"]}
    assert "no MatMul" not in candidates["int8 dynamic"]["reason"]  # the layers are seen
    assert not any(c["status"] == "failed" for c in candidates.values()), candidates
    assert report["verification"]["passed"] and result.manifest.inputs[0].shape == (None, 3, None, None)
    # The original and its fp32 artifact are one graph: no invented speed-up between them.
    rows = report["results"]
    assert rows[0]["name"] == "original (onnx)"
    assert rows[0]["latency"] == (rows[1] if len(rows) == 3 else rows[-1])["latency"]
    assert {"load", "data", "export", "search", "verify", "total"} <= set(report["timings_s"])
    assert "## Where the time went" in (foreign / "bundle" / "report.md").read_text()


def test_a_candidate_that_cannot_run_is_reported_and_the_search_goes_on(foreign, monkeypatch):
    # Without the opset upgrade, onnxruntime writes per-channel QDQ (axis) into an opset-12
    # graph, which onnxruntime then refuses to load: the real failure other exporters' models hit.
    monkeypatch.setattr(onnx_graph, "MIN_OPSET", 1)
    result = convert(foreign / "foreign.onnx", device="x86-64", precision="auto", calib=foreign / "calib.npz",
                     eval_data=foreign / "eval.npz", min_cosine=0.99, out=foreign / "bundle", **FAST)
    failed = [c for c in result.report["search"]["candidates"] if c["status"] == "failed"]
    assert failed and all("does not run" in c["reason"] or "INVALID" in c["reason"] for c in failed), failed
    # The search went on past them to a candidate that runs (QOperator int8, fp16 or fp32, by speed).
    shipped = [c for c in result.report["search"]["candidates"] if c["status"] == "shipped"]
    assert len(shipped) == 1 and shipped[0]["label"] not in {c["label"] for c in failed}
    assert result.report["verification"]["passed"]


def test_few_eval_samples_warn_about_noise_not_ranges(foreign):
    np.savez(foreign / "few.npz", image=digits_images(24, 12, offset=1000))
    result = convert(foreign / "foreign.onnx", device="x86-64", precision="fp32", calib=foreign / "calib.npz",
                     eval_data=foreign / "few.npz", out=foreign / "bundle", **FAST)
    about_eval = [w for w in result.warnings if "--eval" in w]
    assert about_eval and all("held-out" in w and "ranges" not in w for w in about_eval), result.warnings


def test_qoperator_u8s8_is_its_own_candidate_on_a_cpu_board(foreign):
    """QDQ s8s8 being slow on a host says nothing about onnxruntime's QOperator u8s8 kernels."""
    import onnxruntime as ort

    from edgec.converters.base import Recipe
    from edgec.devices import get_profile
    from edgec.formats import get_format
    from edgec.sdk.load.data import SampleSet
    from edgec.sdk.load.onnx import load_onnx
    from edgec.sdk.quantize.search import ladder

    onnx_graph.normalize(foreign / "foreign.onnx", foreign / "ready.onnx")
    calib = SampleSet({"image": digits_images(24, 64)})
    done = converter_for("onnx").quantize(foreign / "ready.onnx", foreign / "u8s8.onnx",
                                          recipe=Recipe("int8", "static", "minmax", layout="qoperator"),
                                          source=load_onnx(foreign / "foreign.onnx"), calib=calib,
                                          profile=get_profile("x86-64"))
    assert done["format"] == "QOperator" and done["activations"].startswith("uint8")
    ops = {n.op_type for n in onnx.load(str(foreign / "u8s8.onnx")).graph.node}
    assert {"QLinearConv", "QuantizeLinear"} <= ops and "DequantizeLinear" in ops
    x = digits_images(24, 16, offset=1000)
    ref = ort.InferenceSession(str(foreign / "ready.onnx")).run(None, {"image": x})[0]
    got = ort.InferenceSession(str(foreign / "u8s8.onnx")).run(None, {"image": x})[0]
    cosine = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.99
    layers = converter_for("onnx").layers(foreign / "ready.onnx")
    cpu = [r.label() for r in ladder(get_format("onnx"), get_profile("x86-64"), ["int8", "fp32"], True, layers)
           if not isinstance(r, tuple)]
    gpu = [r.label() for r in ladder(get_format("onnx"), get_profile("jetson-orin-nano"), ["int8", "fp32"], True, layers)
           if not isinstance(r, tuple)]
    assert "int8 static minmax, QOperator u8s8" in cpu and not any("QOperator" in label for label in gpu)
