"""A bundle for a GPU board, on a runtime without the GPU build of onnxruntime: it runs, and says so loudly."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np

from edgec.runtime import load


def test_missing_cuda_and_tensorrt_are_a_warning_naming_the_fix(tmp_path, fixture_bundle, digits_test, caplog,
                                                                monkeypatch):
    from edgec.runtime.bundle.backends import onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "_WARNED", set())  # as in a fresh process
    bundle = shutil.copytree(fixture_bundle("onnx", "fp32"), tmp_path / "jetson")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["device"]["execution_providers"] = ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                 "CPUExecutionProvider"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="edgec"):
        model = load(bundle)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "TensorrtExecutionProvider" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    message = warned[0].getMessage()  # one line: what was asked, what runs, how to fix it
    assert "CUDAExecutionProvider" in message and "running on CPUExecutionProvider" in message
    assert "onnxruntime-gpu" in message and "Jetson" in message
    caplog.clear()  # once per cause per process: a conversion opens many sessions for one missing provider
    with caplog.at_level(logging.INFO, logger="edgec"):
        load(bundle)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING], [r.getMessage() for r in caplog.records]
    reference = load(fixture_bundle("onnx", "fp32"))
    x = digits_test.x[:8]
    got, want = model.predict({"input": x}), reference.predict({"input": x})
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
