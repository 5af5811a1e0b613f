"""The committed fixture bundles (what the runtime tests serve) still look like what convert writes today."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"
CASES = [("onnx", "fp32", ""), ("onnx", "int8", ""), ("tflite", "fp32", ""), ("tflite", "int8", ""),
         ("onnx", "fp32", "-aarch64"), ("onnx", "int8", "-aarch64")]  # (the ONNX bundles arm64 boards' tests push)
REBUILD = "the committed fixture bundles are stale: rebuild them with .venv/bin/python tests/fixtures/build.py"


@pytest.mark.parametrize(("fmt", "precision", "arch"), CASES)
def test_fixture_bundles_have_todays_manifest_shape(bundles, fmt, precision, arch):
    fresh = json.loads((bundles(fmt, precision).bundle / "manifest.json").read_text())
    kept = json.loads((FIXTURES / f"{fmt}-{precision}{arch}" / "manifest.json").read_text())
    assert kept["schema_version"] == fresh["schema_version"], REBUILD
    assert set(kept) == set(fresh), REBUILD
    assert set(kept["device"]) == set(fresh["device"]), REBUILD
    assert (kept["format"], kept["precision"]) == (fresh["format"], fresh["precision"])
    for old, new in zip(kept["inputs"] + kept["outputs"], fresh["inputs"] + fresh["outputs"]):
        assert (sorted(old), old["dtype"], old["shape"]) == (sorted(new), new["dtype"], new["shape"]), REBUILD
