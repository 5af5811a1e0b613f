"""--precision auto on a deep third-party-style CNN ends: a per-layer ranking from one run, a time budget
whose cut is reported, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnx")
from helpers.models import conv_model, digits_images  # noqa: E402

from edgec.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """30 convolutions, opset 12, every weight a Constant node (as other exporters write them); real digits."""
    root = tmp_path_factory.mktemp("deep")
    conv_model(root / "deep.onnx", channels=(8,) * 30, downsample=(10, 20))
    np.savez(root / "calib.npz", image=digits_images(16, 48))
    np.savez(root / "eval.npz", image=digits_images(16, 48, offset=1000))
    return root


def convert(deep, out, *extra):
    result = runner.invoke(app, [str(a) for a in ("convert", deep / "deep.onnx", "--device", "rpi4", "--calib",
                                                  deep / "calib.npz", "--eval", deep / "eval.npz", "--out", out,
                                                  "--json", *extra)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_mixed_precision_ranks_layers_from_one_calibrated_run(deep, tmp_path):
    # A budget plain int8 misses on 30 stacked layers: mixed precision needs the ranking. (rpi4: an ONNX model
    # goes to onnxruntime there, and host timings do not decide for an Arm board.)
    report, said = convert(deep, tmp_path / "b", "--min-cosine", "0.9999")
    search = report["search"]
    layers = search["sensitivity"]["layers"]
    assert len(layers) == 31 and all(layer["cosine_min"] is None for layer in layers)  # 30 convs and the head, one run
    assert sum(layer["error"] > 0 for layer in layers) >= 30 and layers[0]["error"] > layers[29]["error"]
    assert "Per-layer sensitivity" in said and "31 layers, one run" in " ".join(said.split())
    assert search["cut_short"] is None
    assert any(c["float_layers"] for c in search["candidates"])  # mixed candidates were built from the ranking


def test_a_search_past_its_time_budget_ships_what_it_has_and_says_what_it_cut(deep, tmp_path):
    report, said = convert(deep, tmp_path / "b", "--min-cosine", "0.9999", "--time-budget", "0.001")
    search = report["search"]
    assert "ran out before" in search["cut_short"] and "int8" in search["cut_short"]
    untried = [c for c in search["candidates"] if "time budget" in (c["reason"] or "")]
    assert untried and all(c["status"] not in ("within budget", "shipped") for c in untried)
    assert report["target"]["precision"] in ("fp32", "int8", "fp16") and report["verification"]["passed"]
