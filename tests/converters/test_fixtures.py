"""The committed fixture bundles (what the runtime tests serve) still look like what convert writes today."""

from __future__ import annotations

import json

import pytest

CASES = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
REBUILD = "the committed fixture bundles are stale: rebuild them with .venv/bin/python tests/fixtures/build.py"


@pytest.mark.parametrize(("fmt", "precision"), CASES)
def test_fixture_bundles_have_todays_manifest_shape(bundles, fixture_bundle, fmt, precision):
    fresh = json.loads((bundles(fmt, precision).bundle / "manifest.json").read_text())
    kept = json.loads((fixture_bundle(fmt, precision) / "manifest.json").read_text())
    assert kept["schema_version"] == fresh["schema_version"], REBUILD
    assert set(kept) == set(fresh), REBUILD
    assert set(kept["device"]) == set(fresh["device"]), REBUILD
    assert (kept["format"], kept["precision"]) == (fresh["format"], fresh["precision"])
    for old, new in zip(kept["inputs"] + kept["outputs"], fresh["inputs"] + fresh["outputs"]):
        assert (sorted(old), old["dtype"], old["shape"]) == (sorted(new), new["dtype"], new["shape"]), REBUILD
