"""Fidelity per output and per channel, the task each model is judged on, mixed precision and fp16
that never make a model worse, and reports that say what happened."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgec.devices import get_profile
from edgec.errors import ValidationError
from edgec.sdk.quantize.budget import Budget
from edgec.sdk.quantize.search import speed_rule
from edgec.runtime.detection import decode, match, nms
from edgec.sdk.verify.fidelity import Reference, channel_axis
from edgec.sdk.verify.task import TaskOptions


# -- per output, per channel ---------------------------------------------------------------------
@pytest.mark.parametrize("shape, axis", [
    ((8, 10), 1), ((8, 84, 8400), 1), ((8, 8400, 84), 2), ((8, 16, 64), 2), ((8, 21, 64, 64), 1),
    ((8, 64, 64, 21), 3), ((8,), None), ((8, 2, 3, 4, 5), 1),
])
def test_channel_axis_follows_how_heads_are_laid_out(shape, axis):
    assert channel_axis(shape) == axis


def _head(rng, n=16, anchors=200, classes=3):
    """A [N, 4+C, A] head: boxes in pixels (0..640), scores in 0..1 with a few confident ones."""
    boxes = rng.uniform(20, 600, (n, 4, anchors)).astype(np.float32)
    scores = rng.uniform(0, 0.05, (n, classes, anchors)).astype(np.float32)
    for k in range(n):
        for a in rng.choice(anchors, 4, replace=False):
            scores[k, rng.integers(classes), a] = rng.uniform(0.5, 1.0)
    return np.concatenate([boxes, scores], 1)


def test_a_collapsed_score_row_cannot_hide_behind_box_coordinates():
    rng = np.random.default_rng(0)
    head = _head(rng)
    collapsed = head.copy()
    collapsed[:, 4:] = np.round(collapsed[:, 4:] / 2.5) * 2.5  # one int8 step of a 0..640 scale
    ref = Reference([head], ["output0"])
    fid = ref.compare([collapsed])
    assert fid.cosine_min > 0.999  # the whole-output cosine sees nothing
    assert fid.channel_cosine_min < 0.5 and fid.outputs[0].worst_channel >= 4
    assert ref.task.name == "detect" and fid.task.value < 0.5
    ok, lines = Budget(min_cosine=0.99).check(fid, None)
    joined = " ".join(lines)
    assert not ok and any(f"channel {c} (axis 1)" in joined for c in (4, 5, 6)), joined


def test_each_output_is_compared_on_its_own():
    rng = np.random.default_rng(1)
    big, small = rng.normal(0, 100, (32, 8)), rng.normal(0, 0.01, (32, 3))
    fid = Reference([big, small], ["boxes", "probs"], options=TaskOptions(task="raw")).compare(
        [big, rng.normal(0, 0.01, (32, 3))])
    assert [o.name for o in fid.outputs] == ["boxes", "probs"]
    assert fid.outputs[0].cosine_min == pytest.approx(1.0) and fid.outputs[1].cosine_min < 0.9
    assert fid.cosine_min == fid.outputs[1].cosine_min and "probs" in fid.worst()


def test_quiet_channels_are_reported_not_budgeted():
    rng = np.random.default_rng(2)
    out = np.concatenate([rng.normal(0, 10, (16, 3)), np.full((16, 1), 1e-6)], axis=1)
    cand = out.copy()
    cand[:, 3] = 0.0  # below any int8 step of this output
    fid = Reference([out], ["y"], options=TaskOptions(task="raw")).compare([cand])
    assert fid.outputs[0].quiet_channels == 1 and fid.channel_cosine_min == pytest.approx(1.0)


def test_user_named_channel_axis_and_bad_ones():
    out = np.random.default_rng(3).normal(size=(4, 6, 5)).astype(np.float32)
    ref = Reference([out], ["y"], options=TaskOptions(task="raw", channel_axes=("y=2",)))
    assert ref.axes == [2] and ref.compare([out]).outputs[0].channels == 5
    with pytest.raises(ValidationError, match="outputs are y"):
        Reference([out], ["y"], options=TaskOptions(channel_axes=("z=1",)))


# -- tasks ---------------------------------------------------------------------------------------
def test_class_scores_are_found_by_labels_not_taken_from_the_first_output():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 64)
    logits = rng.normal(0, 1, (64, 10))
    logits[np.arange(64), labels] += 5
    box = rng.uniform(0, 8, (64, 4))  # a regression output first, as a face detector's boxes
    ref = Reference([box, logits], ["ink_box", "digit"], labels=labels)
    assert ref.task.name == "classify" and ref.names[ref.task.output] == "digit"
    assert ref.accuracy() == pytest.approx(1.0)
    fid = ref.compare([box, logits])
    assert fid.top1_agreement == 1.0 and fid.accuracy == 1.0
    # Without labels, a name that says scores decides; else rows summing to 1.
    assert Reference([box, logits], ["a", "logits"]).task.output == 1
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert Reference([box, probs], ["a", "b"]).task.output == 1


def test_segmentation_and_embeddings_have_task_metrics():
    rng = np.random.default_rng(5)
    seg = rng.normal(size=(4, 5, 16, 16))
    fid = Reference([seg], ["mask"]).compare([seg + rng.normal(0, 0.01, seg.shape)])
    assert fid.task.task == "segment" and fid.task.value > 0.95
    emb = rng.normal(size=(40, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ref = Reference([emb], ["e"])
    assert ref.task.name == "embed" and ref.task.guessed  # unit-length rows
    same = ref.compare([emb])
    assert same.task.value == pytest.approx(1.0) and same.task.details["neighbour_agreement"] == 1.0
    other = ref.compare([rng.normal(size=(40, 32))])
    assert other.task.value < 0.5 and other.task.details["neighbour_agreement"] < 0.5
    assert other.channel_cosine_min == 1.0  # an embedding's features are not budgeted as channels


def test_decode_nms_and_match():
    rows = np.zeros((4 + 2, 4), np.float32)
    rows[:4, 0] = (50, 50, 20, 20)  # a box
    rows[:4, 1] = (51, 50, 20, 20)  # the same object, lower score: suppressed
    rows[:4, 2] = (51, 50, 20, 20)  # same place, another class: kept
    rows[:4, 3] = (200, 200, 10, 10)
    rows[4, 0], rows[4, 1], rows[5, 2], rows[4, 3] = 0.9, 0.6, 0.7, 0.1  # the last under the threshold
    dets = decode(rows, threshold=0.25, iou=0.45)
    assert sorted(dets[:, 5].tolist()) == [0, 1] and len(dets) == 2
    assert nms(dets[:, :4], dets[:, 4], np.zeros(2), 0.45).tolist() == [0]
    moved = dets.copy()
    moved[:, :4] += 30  # no longer overlapping
    assert match(dets, dets)[0] == 2 and match(dets, moved)[0] == 0


def test_task_option_errors():
    with pytest.raises(ValidationError, match="unknown task"):
        TaskOptions(task="yolo")
    with pytest.raises(ValidationError, match="score threshold"):
        TaskOptions(score_threshold=1.5)
    with pytest.raises(ValidationError, match="needs an output of shape"):
        Reference([np.zeros((4, 3, 8, 8))], ["y"], options=TaskOptions(task="classify"))


# -- decisions and reports -----------------------------------------------------------------------
def test_speed_rule_rests_on_the_profile_where_host_timing_says_nothing():
    x86, rpi4, jetson = get_profile("x86-64"), get_profile("rpi4"), get_profile("jetson-orin-nano")
    assert x86.timed_here("x86_64") and x86.timed_here("AMD64")
    assert not rpi4.timed_here("x86_64") and rpi4.timed_here("aarch64") and rpi4.timed_here("arm64")
    assert not jetson.timed_here("aarch64")  # a GPU board: CPU timings say nothing
    rule = speed_rule(jetson)
    assert "reported only" in rule and "int8" in rule and "fp16" in rule


def test_report_json_of_a_conversion_has_per_output_fidelity(assets, tmp_path):
    pytest.importorskip("torch")
    from edgec import convert

    result = convert(assets / "model.pt2", device="x86-64", calib=assets / "calib.npz",
                     eval_data=assets / "eval.npz", out=tmp_path / "b", latency_budget_s=0.05)
    report = json.loads((result.bundle / "report.json").read_text())
    shipped = report["results"][-1]["fidelity"]
    assert shipped["outputs"][0]["name"] == "output" and shipped["outputs"][0]["channels"] == 10
    assert report["summary"]["task"]["task"] == "classify"
    assert "classify on output 'output'" in report["data"]["task"]
    change = report["summary"]["accuracy_change_points"]
    assert change == pytest.approx(-report["summary"]["accuracy_drop_points"])
    assert "Speed rule:" in (result.bundle / "report.md").read_text()


# -- mixed precision and fp16 that never hurt ----------------------------------------------------
def _offset_model(path):
    """An ONNX model that adds a large offset and takes it away again (as models fed raw timestamps or
    pixel sums do): fp16 cannot hold 2048.5, so a plain fp16 conversion shifts every output by 0.5."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([2048.5], np.float32), "offset"),
             numpy_helper.from_array(np.array([2048.0], np.float32), "back"),
             numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("Add", ["x", "offset"], ["shifted"], name="shift"),
             helper.make_node("Sub", ["shifted", "back"], ["centred"], name="unshift"),
             helper.make_node("MatMul", ["centred", "w"], ["y"], name="project")]
    model = helper.make_model(helper.make_graph(nodes, "offset", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def test_fp16_keeps_the_ops_it_would_break_in_fp32(tmp_path):
    pytest.importorskip("onnx")
    from typer.testing import CliRunner

    from edgec.cli import app

    model = _offset_model(tmp_path / "offset.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (64, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    result = CliRunner().invoke(app, ["convert", str(model), "--device", "x86-64", "--precision", "fp16",
                                      "--calib", str(tmp_path / "calib.npz"), "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"]["recipe"]["fp32_ops"] == ["Add"]
    assert report["results"][-1]["fidelity"]["cosine_min"] > 0.999


def test_multi_output_model_is_judged_per_output_and_on_its_class_scores(digits, tmp_path):
    """A digit classifier that also regresses the ink's bounding box, box output first (as face
    detectors put boxes first): accuracy comes from the class scores, every output is reported."""
    torch = pytest.importorskip("torch")
    from typer.testing import CliRunner

    from edgec.cli import app
    from edgec.sdk.examples.zoo import export_pt2

    def ink_box(x):
        rows, cols = (x[:, 0] > 0.3).any(axis=2), (x[:, 0] > 0.3).any(axis=1)
        first = lambda m: m.argmax(axis=1)  # noqa: E731
        last = lambda m: m.shape[1] - 1 - m[:, ::-1].argmax(axis=1)  # noqa: E731
        return np.stack([first(cols), first(rows), last(cols) + 1, last(rows) + 1], 1).astype(np.float32)

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Flatten())
            self.box, self.digit = torch.nn.Linear(32 * 64, 4), torch.nn.Linear(32 * 64, 10)

        def forward(self, x):
            f = self.body(x)
            return self.box(f), self.digit(f)

    torch.manual_seed(0)
    model = TwoHeads()
    x, y, box = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train), torch.from_numpy(
        ink_box(digits.x_train))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for idx in torch.randperm(len(x)).split(64):
            b, d = model(x[idx])
            loss = torch.nn.functional.cross_entropy(d, y[idx]) + torch.nn.functional.smooth_l1_loss(b, box[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    export_pt2(model, digits.x_train[:2], tmp_path / "two.pt2")
    np.savez(tmp_path / "calib.npz", x=digits.x_calib, labels=digits.y_calib)
    np.savez(tmp_path / "eval.npz", x=digits.x_test, labels=digits.y_test)
    with torch.no_grad():
        expected = float((model(torch.from_numpy(digits.x_test))[1].argmax(1).numpy() == digits.y_test).mean())
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "two.pt2"), "--device", "x86-64", "--calib",
                                      str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
                                      "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "classify on output 'output_1'" in report["data"]["task"] and "labels" in report["data"]["task"]
    assert report["results"][0]["accuracy"] == pytest.approx(expected)
    shipped = report["results"][-1]["fidelity"]
    assert [o["name"] for o in shipped["outputs"]] == ["output_0", "output_1"]
    assert [o["channels"] for o in shipped["outputs"]] == [4, 10]
    assert shipped["accuracy"] > 0.9
