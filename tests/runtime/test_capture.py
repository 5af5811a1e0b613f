"""Data capture on real digits: off by default, bounded when on, biased toward the answers the model is
unsure of, and fetched back only with the admin token."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.shifts import SHIFTS

from edgec.errors import ValidationError
from edgec.runtime.config import CaptureConfig, DriftConfig, ModelConfig, ServeConfig
from edgec.runtime.serve.capture import confidence
from edgec.runtime.serve.runtime import Runtime


def _runtime(bundle, folder, **capture) -> Runtime:
    return Runtime(ServeConfig(models=(ModelConfig("digits", bundle),), isolate=False,
                               drift=DriftConfig(cpu_budget=1.0),
                               capture=CaptureConfig(folder=folder, **capture)))


def _serve(runtime: Runtime, x: np.ndarray, batch: int = 8) -> None:
    for i in range(0, len(x), batch):
        runtime.predict("digits", {"input": x[i:i + batch]})
        runtime.drift.wait_idle()


def test_capture_is_off_unless_asked(tmp_path, fixture_bundle, digits_test):
    runtime = Runtime(ServeConfig(models=(ModelConfig("digits", fixture_bundle("onnx", "int8")),), isolate=False,
                                  capture=CaptureConfig(folder=tmp_path / "capture"), drift=DriftConfig(cpu_budget=1.0)))
    try:
        _serve(runtime, SHIFTS["rotate"](digits_test.x[:100]))
        assert not (tmp_path / "capture").exists() and runtime.capture.written == 0
    finally:
        runtime.close()


def test_unsure_answers_are_kept_and_the_ring_stays_bounded(tmp_path, fixture_bundle, digits_test):
    runtime = _runtime(fixture_bundle("onnx", "int8"), tmp_path / "capture", enabled=True, keep_share=0.0,
                       per_minute=10_000, max_samples=40)
    try:
        rotated = np.concatenate([SHIFTS["rotate"](digits_test.x), np.rot90(digits_test.x, axes=(2, 3))])
        scores = runtime.cache.get("digits").predict({"input": rotated})["output"]
        unsure = int((confidence({"output": scores}, len(rotated)) < 0.5).sum())
        assert unsure > 40  # more than the ring holds: it must drop the oldest
        _serve(runtime, rotated)
        assert runtime.capture.written == unsure  # every unsure answer, no sure one (keep_share 0)
        files = sorted((tmp_path / "capture" / "digits").iterdir())
        assert len(files) == 40 and all(f.suffix == ".npz" for f in files)
        pulled = np.load(io.BytesIO(runtime.capture.pull("digits")))
        assert pulled["input"].shape == (40, 1, 8, 8) and pulled["output.output"].shape == (40, 10)
        assert set(pulled["reason"]) == {"low_confidence"}
        assert np.all(np.diff(pulled["time"]) >= 0)  # oldest first: the newest 40 were kept
        # what was kept is what was served: the last unsure rows, bit for bit
        conf = confidence({"output": scores}, len(rotated))
        assert np.array_equal(pulled["input"], rotated[conf < 0.5][-40:])
    finally:
        runtime.close()


def test_the_rate_and_disk_caps_hold(tmp_path, fixture_bundle, digits_test):
    runtime = _runtime(fixture_bundle("onnx", "int8"), tmp_path / "capture", enabled=True, keep_share=1.0,
                       per_minute=25, max_samples=1000, max_mb=0.01)
    try:
        _serve(runtime, digits_test.x[:200])
        assert runtime.capture.written == 25  # a full bucket, nothing more within the minute
        on_disk = sum(f.stat().st_size for f in (tmp_path / "capture" / "digits").iterdir())
        assert 0 < on_disk <= 0.01 * 2**20
    finally:
        runtime.close()


@pytest.mark.parametrize("table, message", [
    ({"enabled": 1}, "enabled must be true or false"),
    ({"max_samples": 0}, "max_samples must be a whole number"),
    ({"per_minute": 1.5}, "per_minute must be a whole number"),
    ({"keep_share": 2}, "keep_share must be from 0 to 1"),
    ({"folder": ""}, "folder must be a path"),
    ({"share": 0.1}, "share"),
])
def test_bad_capture_settings_name_the_key(table, message):
    with pytest.raises(ValidationError, match=message):
        ServeConfig.from_dict({"capture": table})


def test_a_relative_capture_folder_is_beside_runtime_toml(tmp_path):
    (tmp_path / "runtime.toml").write_text('[capture]\nenabled = true\nfolder = "kept"\n')
    assert ServeConfig.from_toml(tmp_path / "runtime.toml").capture.folder == tmp_path / "kept"


def test_a_recurrent_state_is_not_cut_into_rows(tmp_path):
    """A state ``[2, batch, 4]`` beside ``[batch, 3]`` inputs has no rows: only the batch-first tensors are kept."""
    from edgec.runtime.serve.capture import Capture

    capture = Capture(CaptureConfig(enabled=True, folder=tmp_path, keep_share=1.0, per_minute=100))
    feeds = {"x": np.arange(15, dtype=np.float32).reshape(5, 3), "h0": np.zeros((2, 5, 4), np.float32)}
    outputs = {"y": np.ones((5, 2), np.float32), "h1": np.ones((2, 5, 4), np.float32)}
    assert capture.offer("rnn", feeds, outputs, drifting=False, batched={"x", "y"}) == 5
    pulled = np.load(io.BytesIO(capture.pull("rnn")))
    assert sorted(pulled.files) == ["output.y", "reason", "time", "x"]
    assert np.array_equal(pulled["x"], feeds["x"])
