"""The calibration-data doctor, on real digits made wrong in the ways users make them wrong."""

from __future__ import annotations

import numpy as np
import pytest

from edgec import convert
from edgec.errors import CalibrationError
from edgec.sdk.load.data import SampleSet
from edgec.sdk.load.doctor import diagnose

from conftest import FAST


def _set(x: np.ndarray) -> SampleSet:
    return SampleSet({"x": x}, None, "test")


def test_clean_digits_have_no_findings(digits):
    assert diagnose(_set(digits.x_calib), _set(digits.x_test)) == []


def test_duplicates_are_counted(digits):
    x = np.concatenate([digits.x_calib[:60], np.repeat(digits.x_calib[:1], 40, axis=0)])
    (finding,) = diagnose(_set(x), _set(digits.x_test))
    assert (finding.level, finding.code) == ("warning", "duplicates")
    assert "40 of 100 calibration samples (40%)" in finding.message


def test_identical_samples_are_an_error(digits):
    (finding,) = diagnose(_set(np.repeat(digits.x_calib[:1], 50, axis=0)))
    assert finding.level == "error" and "all 50 calibration samples are identical" in finding.message


def test_constant_input_is_an_error():
    x = np.full((50, 1, 8, 8), 0.5, np.float32)
    findings = diagnose(_set(x))
    assert any(f.code == "constant" and "every value 0.5" in f.message for f in findings)


def test_preprocessing_mismatch_is_an_error_with_numbers(digits):
    (finding,) = diagnose(_set(digits.x_calib * 255), _set(digits.x_test))
    assert (finding.level, finding.code) == ("error", "range-mismatch")
    assert "255" in finding.message and "[0, 1]" in finding.message and "preprocessed differently" in finding.message


def test_milder_mismatch_and_shift_are_warnings(digits):
    (finding,) = diagnose(_set(digits.x_calib * 3), _set(digits.x_test))
    assert (finding.level, finding.code) == ("warning", "range-mismatch")
    (shift,) = diagnose(_set(digits.x_calib), _set(digits.x_test + 1.0))
    assert shift.code == "shift" and "standard deviations" in shift.message


def test_convert_refuses_mismatched_calibration_and_leaves_nothing(assets, tmp_path, digits, no_leftovers):
    bad = tmp_path / "calib255.npz"
    np.savez(bad, x=digits.x_calib * 255, labels=digits.y_calib)
    with pytest.raises(CalibrationError, match="preprocessed differently"):
        convert(assets / "model.pt2", device="x86-64", calib=bad, eval_data=assets / "eval.npz",
                out=tmp_path / "b", **FAST)
    assert no_leftovers(tmp_path, "b")


def test_convert_reports_duplicates_as_a_warning(assets, tmp_path, digits):
    dup = tmp_path / "dup.npz"
    x = np.concatenate([digits.x_calib[:150], np.repeat(digits.x_calib[:1], 60, axis=0)])
    np.savez(dup, x=x)
    result = convert(assets / "model.pt2", device="x86-64", precision="int8", calib=dup,
                     eval_data=assets / "eval.npz", out=tmp_path / "b", **FAST)
    assert any("exact duplicates" in w for w in result.warnings)
    assert result.report["data"]["doctor"][0]["code"] == "duplicates"
