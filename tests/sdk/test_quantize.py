"""The accuracy-budget search on the digits CNN (trained on real digits), both formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgec import convert
from edgec.errors import ValidationError, VerificationError
from edgec.runtime import load

from conftest import FAST


@pytest.mark.serial  # what ships is decided by measured speed: another worker's load would change it
@pytest.mark.parametrize(("device", "fmt"), [("x86-64", "onnx"), ("rpi4", "tflite")])
def test_auto_ships_int8_within_a_half_point_budget(assets, tmp_path, digits, device, fmt):
    result = convert(assets / "model.pt2", device=device, calib=assets / "calib.npz",
                     eval_data=assets / "eval.npz", max_drop=0.5, out=tmp_path / "b", **FAST)
    report = result.report
    assert report["target"]["format"] == fmt
    search = report["search"]
    shipped = [c for c in search["candidates"] if c["status"] == "shipped"]
    assert len(shipped) == 1 and shipped[0]["precision"] == "int8"
    assert shipped[0]["drop_points"] <= 0.5
    assert search["budget"] == "top-1 drop ≤ 0.5 pt"
    # Measured again by the bundle the runtime loads, on every labelled test digit.
    model = load(result.bundle)
    preds = next(iter(model.predict(digits.x_test).values())).argmax(1)
    original = report["results"][0]["accuracy"]
    assert 100 * (original - np.mean(preds == digits.y_test)) <= 0.5
    assert report["summary"]["size_vs_fp32"] < 0.35
    md = (result.bundle / "report.md").read_text()
    assert "## Candidates tried" in md and "**int8 static minmax**" in md


def test_a_budget_int8_cannot_meet_falls_back_and_says_so(assets, tmp_path):
    # A GPU board: this host's CPU timings decide nothing there, so every calibration and the
    # mixed-precision steps are tried whatever the timing noise (on a CPU board a slower
    # static int8 rightly stops the search early).
    result = convert(assets / "model.pt2", device="jetson-orin-nano", calib=assets / "calib.npz",
                     eval_data=assets / "eval.npz", min_cosine=0.99999, out=tmp_path / "b", **FAST)
    cands = result.report["search"]["candidates"]
    tried = [c for c in cands if c["precision"] == "int8" and c.get("fidelity")]
    assert {c["label"] for c in tried} >= {"int8 static minmax", "int8 static percentile", "int8 static entropy"}
    assert all(c["status"] == "over budget" and "< 0.99999" in c["reason"] for c in tried)
    # Mixed precision was tried from the sensitivity ranking before giving up on int8.
    mixed = [c for c in tried if c["float_layers"]]
    assert mixed and result.report["search"]["sensitivity"]["layers"]
    assert mixed[0]["float_layers"][0] == result.report["search"]["sensitivity"]["layers"][0]["display"]
    assert result.manifest.precision in ("fp16", "fp32")
    assert any("no int8 recipe met the budget" in w for w in result.warnings)
    assert result.report["verification"]["checks"][0].startswith("cosine min")


def test_nothing_within_budget_is_an_error_listing_every_try(assets, tmp_path, no_leftovers):
    # The Edge TPU runs int8 only: there is no float recipe to fall back to.
    with pytest.raises(VerificationError) as info:
        convert(assets / "model.pt2", device="coral", calib=assets / "calib.npz",
                eval_data=assets / "eval.npz", min_cosine=0.99999, out=tmp_path / "b", **FAST)
    message = str(info.value)
    assert "no candidate fits the budget (cosine ≥ 0.99999" in message
    assert "int8 static minmax: over budget" in message
    assert "int8 dynamic: skipped (coral-edgetpu runs full-integer models only)" in message
    assert no_leftovers(tmp_path, "b")


def test_max_drop_needs_labels(assets, tmp_path):
    with pytest.raises(ValidationError, match="--max-drop needs labels"):
        convert(assets / "model.pt2", device="x86-64", calib=assets / "calib.npz",
                eval_data=assets / "test.npz", max_drop=1.0, out=tmp_path / "b", **FAST)


def test_max_drop_is_only_for_auto(assets, tmp_path):
    with pytest.raises(ValidationError, match="--max-drop is the budget of --precision auto"):
        convert(assets / "model.pt2", precision="int8", calib=assets / "calib.npz", max_drop=1.0,
                out=tmp_path / "b")


def test_report_json_lists_candidates_with_measurements(bundles_auto):
    report = json.loads((bundles_auto.bundle / "report.json").read_text())
    row = next(c for c in report["search"]["candidates"] if c["status"] == "shipped")
    for key in ("size_bytes", "size_vs_fp32", "speedup_vs_fp32", "fidelity", "latency", "recipe", "reason"):
        assert key in row
    assert row["recipe"]["mode"] == "static" and row["recipe"]["precision"] == "int8"


@pytest.fixture(scope="module")
def bundles_auto(assets, tmp_path_factory):
    return convert(assets / "model.pt2", device="x86-64", calib=assets / "calib.npz",
                   out=tmp_path_factory.mktemp("auto") / "b", **FAST)
