"""Drift on real digits: the 450 test digits no conversion saw raise no alert; the same digits shifted as a
board's camera would shift them (noise, blur, a 15 degree turn, less light) do.

The references are the ``drift.json`` that ``edgec convert`` wrote into the committed fixture bundles
from their held-out data (tests/fixtures/build.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from helpers.shifts import SHIFTS

from edgec.errors import BundleError, ValidationError
from edgec.runtime.config import DriftConfig, ModelConfig, ServeConfig
from edgec.runtime.serve.drift import REFERENCE_NAME, read_reference
from edgec.runtime.serve.runtime import Runtime


def _runtime(bundle, **drift) -> Runtime:
    return Runtime(ServeConfig(models=(ModelConfig("digits", bundle),), isolate=False,
                               drift=DriftConfig(**{"cpu_budget": 1.0, **drift})))


def _serve(runtime: Runtime, x: np.ndarray, batch: int = 8) -> dict:
    """Serve ``x`` batch by batch, each binned before the next (every sample counts)."""
    for i in range(0, len(x), batch):
        runtime.predict("digits", {"input": x[i:i + batch]})
        runtime.drift.wait_idle()
    return runtime.drift.describe()["digits"]


def _drift_alerts(runtime: Runtime) -> list[dict]:
    return [a for a in runtime.alerts if a["kind"] == "drift"]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_unseen_clean_digits_raise_no_alert(fixture_bundle, digits_test, fmt):
    runtime = _runtime(fixture_bundle(fmt, "int8"))
    try:
        drift = _serve(runtime, digits_test.x)
        assert drift["samples"] == 450 and drift["score"] is not None
        assert drift["score"] < 0.25 / 2, drift  # well under the threshold, not just under it
        assert not drift["alert"] and not _drift_alerts(runtime)
    finally:
        runtime.close()


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_shifted_digits_raise_the_drift_alert(fixture_bundle, digits_test, shift):
    runtime = _runtime(fixture_bundle("onnx", "int8"))
    try:
        drift = _serve(runtime, SHIFTS[shift](digits_test.x))
        assert drift["score"] > 0.25 and drift["alert"], drift
        (alert,) = _drift_alerts(runtime)  # once, not once per batch
        assert "model digits" in alert["message"] and drift["statistic"] in alert["message"]
        metrics = runtime.metrics()
        assert 'edgec_drift_alert{model="digits"} 1' in metrics
        assert f'edgec_drift_score{{model="digits"}} {drift["score"]}' in metrics
    finally:
        runtime.close()


def test_the_alert_clears_after_clean_data_and_comes_back_after_a_shift(fixture_bundle, digits_test):
    runtime = _runtime(fixture_bundle("onnx", "int8"), window=250, min_samples=200)
    try:
        assert _serve(runtime, SHIFTS["blur"](digits_test.x[:200]))["alert"]
        cleared = _serve(runtime, digits_test.x[200:])  # 250 clean digits: the whole window
        assert not cleared["alert"] and cleared["score"] < 0.25
        assert _serve(runtime, SHIFTS["dim"](digits_test.x[:200]))["alert"]
        assert len(_drift_alerts(runtime)) == 2
    finally:
        runtime.close()


def test_the_reference_keeps_what_matters_for_a_classifier(fixture_bundle):
    bundle = fixture_bundle("onnx", "int8")
    manifest = json.loads((bundle / "manifest.json").read_text())
    ref = read_reference(bundle, manifest["files"], ["input"], ["output"])
    stats = {f["name"]: f for f in ref["features"]}
    assert set(stats) == {"input.mean", "input.std", "input.outside", "output.confidence", "output.class"}
    assert stats["output.class"]["edges"] == [k + 0.5 for k in range(9)]  # one bin per digit
    assert stats["output.confidence"]["softmax"]  # the CNN answers logits: confidence after a softmax
    assert (stats["input.outside"]["low"], stats["input.outside"]["high"]) == (0.0, 1.0)


def test_sampling_keeps_off_the_request_path(fixture_bundle, digits_test):
    """With the default budget (2% of a core) a burst of requests is sampled, not binned whole."""
    runtime = Runtime(ServeConfig(models=(ModelConfig("digits", fixture_bundle("onnx", "int8")),), isolate=False))
    try:
        for i in range(300):
            runtime.predict("digits", {"input": digits_test.x[i % 450:i % 450 + 1]})
        runtime.drift.wait_idle()
        assert runtime.drift.taken >= 1 and runtime.drift.skipped > 0
        assert runtime.drift.taken + runtime.drift.skipped == 300
    finally:
        runtime.close()


def _with_reference(tmp_path, bundle, text: str):
    """A copy of ``bundle`` whose drift.json is ``text``, its sha256 updated in the manifest (as a forger would)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / REFERENCE_NAME).write_text(text)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][REFERENCE_NAME] = hashlib.sha256(text.encode()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, manifest


@pytest.mark.parametrize("damage, why", [
    (lambda r: r["features"][0].update(edges=r["features"][0]["edges"][::-1]), "not increasing"),
    (lambda r: r["features"][0].update(tensor="../../etc"), "names no input"),
    (lambda r: r["features"][0].update(expected=[1.0]), "bad bins"),
    (lambda r: r.update(features=r["features"] * 20), "1 to 64 features"),
    (lambda r: r["features"][2].update(low="0"), "bad range"),
    (lambda r: r.update(schema=2), "schema 2"),
    (lambda r: r["features"][0].update(stat="detections", layout="sideways", threshold=0.25, iou=0.45),
     "needs a layout, a threshold and an iou"),
    (lambda r: r["features"][0].update(stat="top_score", layout="channels-first", threshold=7, iou=0.45),
     "needs a layout, a threshold and an iou"),
])
def test_a_hostile_reference_is_refused_with_the_reason(tmp_path, fixture_bundle, damage, why):
    bundle = fixture_bundle("onnx", "int8")
    ref = json.loads((bundle / REFERENCE_NAME).read_text())
    damage(ref)
    copy, manifest = _with_reference(tmp_path, bundle, json.dumps(ref))
    with pytest.raises(BundleError, match=why):
        read_reference(copy, manifest["files"], ["input"], ["output"])


def test_a_reference_that_does_not_match_its_sha256_is_not_used_and_serving_goes_on(tmp_path, fixture_bundle,
                                                                                   digits_test):
    copy = tmp_path / "bundle"
    shutil.copytree(fixture_bundle("onnx", "int8"), copy)
    runtime = _runtime(copy)
    try:
        (copy / REFERENCE_NAME).write_text((copy / REFERENCE_NAME).read_text().replace("0.", "1.", 1))
        assert _serve(runtime, digits_test.x[:16])["unavailable"].endswith("does not match the manifest's sha256")
    finally:
        runtime.close()


@pytest.mark.parametrize("table, message", [
    ({"threshold": 0}, "threshold must be a number above 0"),
    ({"window": 10}, "window must be a whole number"),
    ({"min_samples": 600}, "min_samples must be from 1 to window"),
    ({"cpu_budget": 2}, "cpu_budget must be above 0"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"treshold": 0.3}, "treshold"),
])
def test_bad_drift_settings_name_the_key(table, message):
    with pytest.raises(ValidationError, match=message):
        ServeConfig.from_dict({"drift": table})


def test_a_detector_head_is_watched_by_its_detections():
    """Per image: the detections left after the score threshold and class-wise NMS, their best and mean score."""
    from edgec.runtime.serve.drift import detection_values

    head = np.zeros((2, 6, 5), np.float32)  # [N, 4 + 2 classes, 5 anchors], channels first
    boxes = [(20, 20, 10, 10), (80, 80, 10, 10), (50, 50, 10, 10), (20, 20, 10, 10), (21, 20, 10, 10)]
    head[:, :4, :] = np.array(boxes, np.float32).T
    head[0, 4, 0], head[0, 5, 1], head[0, 4, 2] = 0.9, 0.6, 0.1  # two kept, one under the threshold
    head[1, 4, 3], head[1, 4, 4] = 0.8, 0.7  # the same object twice: NMS keeps one
    for layout, tensor in (("channels-first", head), ("channels-last", np.swapaxes(head, 1, 2))):
        how = {"layout": layout, "threshold": 0.25, "iou": 0.45}
        assert detection_values({**how, "stat": "detections"}, tensor).tolist() == [2, 1]
        assert detection_values({**how, "stat": "top_score"}, tensor) == pytest.approx([0.9, 0.8])
        assert detection_values({**how, "stat": "mean_score"}, tensor) == pytest.approx([0.75, 0.8])
