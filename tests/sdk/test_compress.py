"""Pruning and distillation on the digits CNN (trained on real digits), measured on its ONNX export."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgec import convert  # noqa: E402
from edgec.errors import CalibrationError, ValidationError  # noqa: E402
from edgec.sdk.compress import compress  # noqa: E402

from conftest import FAST  # noqa: E402

QUICK = {"epochs": 2, "threads": 1}


@pytest.fixture
def student(digits_model):
    return copy.deepcopy(digits_model)


def test_half_channels_with_distillation_stays_within_a_point_and_shrinks(student, digits_model, digits, tmp_path,
                                                                         torch_accuracy):
    result = compress(student, data=(digits.x_train, digits.y_train), eval_data=(digits.x_test, digits.y_test),
                      teachers=[copy.deepcopy(digits_model)], out=tmp_path / "small.pt2",
                      prune=0.5, structured=True, epochs=4, threads=1)
    first, last = result.steps[0], result.steps[-1]
    assert abs(first.accuracy - torch_accuracy) < 1e-9
    assert 100 * (first.accuracy - last.accuracy) <= 1.0
    assert last.params < 0.35 * first.params  # half the channels of every inner conv: ~a quarter of the weights
    assert last.onnx_bytes < 0.4 * first.onnx_bytes
    assert last.weight_sparsity < 0.01  # channels are gone, not zeroed
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["summary"]["params_vs_original"] == pytest.approx(last.params / first.params)
    assert (tmp_path / "small.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 1 | channels −50% |" in (tmp_path / "small.report.md").read_text()
    # The output feeds `edgec convert`.
    bundle = convert(tmp_path / "small.pt2", device="x86-64", precision="fp32", calib=digits.x_calib,
                     out=tmp_path / "bundle", **FAST)
    assert bundle.manifest.inputs[0].shape == (None, 1, 8, 8)


def test_unstructured_reports_sparsity_and_says_it_is_not_faster(student, digits, tmp_path):
    result = compress(student, data=(digits.x_train, digits.y_train), eval_data=(digits.x_test, digits.y_test),
                      out=tmp_path / "sparse.pt2", prune=0.7, structured=False, **QUICK)
    first, last = result.steps[0], result.steps[-1]
    assert last.weight_sparsity == pytest.approx(0.7, abs=0.01)
    assert last.params == first.params and last.macs == first.macs
    assert last.onnx_bytes == pytest.approx(first.onnx_bytes, rel=0.02)
    (note,) = result.report["notes"]
    assert "zeroed 70% of the weights" in note and "not faster" in note
    reloaded = torch.export.load(str(tmp_path / "sparse.pt2")).module()
    zeros = sum(int((p == 0).sum()) for n, p in reloaded.named_parameters() if "weight" in n and p.dim() > 1)
    total = sum(p.numel() for n, p in reloaded.named_parameters() if "weight" in n and p.dim() > 1)
    assert zeros / total == pytest.approx(0.7, abs=0.01)  # fine-tuning kept the pruned weights at zero


def test_progressive_pruning_steps_and_mac_target(student, digits, tmp_path):
    result = compress(student, data=(digits.x_train, digits.y_train), out=tmp_path / "p.pt2", steps=2,
                      target_macs=0.5, epochs=1, threads=1)
    macs = [s.macs for s in result.steps]
    assert len(macs) == 3 and macs[0] > macs[1] > macs[2]
    assert macs[2] <= 0.5 * macs[0]


def test_feature_distillation_learns_adapters_when_widths_differ(digits, digits_model, tmp_path):
    from edgec.sdk.examples.zoo import digits_cnn, seeded

    narrow = seeded(digits_cnn, width=16)
    result = compress(narrow, data=(digits.x_train[:300], digits.y_train[:300]), out=tmp_path / "f.pt2",
                      prune=0.0, teachers=[copy.deepcopy(digits_model)], features={"3": "3"}, epochs=1, threads=1)
    assert result.steps[-1].label == "distilled" and result.steps[-1].loss


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prune": 1.0}, ValidationError, "outside [0, 1)"),
        ({"prune": -0.1}, ValidationError, "outside [0, 1)"),
        ({"skip": ("33",)}, ValidationError, "did you mean 3"),
        ({"features": {"3": "nope"}, "teachers": "bad-teacher"}, ValidationError, "is not a layer"),
        ({"teachers": "five-classes"}, ValidationError, "teacher 1 outputs [2, 5] but the student outputs [2, 10]"),
        ({"data": "3-channels"}, CalibrationError, "does not fit the student: inputs of shape [2, 3, 8, 8]"),
        ({"data": "eval-6x6"}, CalibrationError, "eval data has samples of shape [1, 6, 6]"),
        ({"data": "labels-11"}, CalibrationError, "labels go up to 11"),
        ({"structured": False, "target_macs": 0.5}, ValidationError, "need --structured"),
    ],
)
def test_bad_input_fails_before_training(student, digits, digits_model, tmp_path, kwargs, error, message):
    kwargs = dict(kwargs)
    data = (digits.x_train, digits.y_train)
    if kwargs.get("data") == "3-channels":
        data = (np.zeros((40, 3, 8, 8), np.float32), digits.y_train[:40])
    elif kwargs.get("data") == "eval-6x6":
        kwargs["eval_data"] = (np.zeros((40, 1, 6, 6), np.float32), digits.y_train[:40])
    elif kwargs.get("data") == "labels-11":
        data = (digits.x_train[:40], np.full(40, 11))
    kwargs.pop("data", None)
    teachers = kwargs.pop("teachers", None)
    if teachers == "five-classes":
        kwargs["teachers"] = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))]
    elif teachers == "bad-teacher":
        kwargs["teachers"] = [copy.deepcopy(digits_model)]
    with pytest.raises(error) as info:
        compress(student, data=data, out=tmp_path / "x.pt2", **{"epochs": 1, "threads": 1, **kwargs})
    assert message in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_structured_pruning_of_a_pt2_asks_for_the_code(assets, digits, tmp_path):
    with pytest.raises(ValidationError, match="structured pruning needs the model's layers"):
        compress(assets / "model.pt2", data=(digits.x_train, digits.y_train), out=tmp_path / "x.pt2")
