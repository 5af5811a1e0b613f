"""The CLI through typer's CliRunner: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from edgec.cli import app  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_devices_table_and_show():
    result = invoke("devices")
    assert result.exit_code == 0
    for name in ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "coral-edgetpu", "x86-64"):
        assert name in result.stdout
    shown = invoke("devices", "show", "rpi4", "--json")
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["format"] == "tflite"
    assert 'name = "rpi4"' in invoke("devices", "show", "rpi", "--toml").stdout


def test_an_onnx_model_for_a_pi_goes_to_onnx_and_says_why_first(assets, tmp_path):
    result = invoke("convert", assets / "model.onnx", "--device", "rpi4", "--precision", "fp32", "--out",
                    tmp_path / "pi", "--json")
    assert result.exit_code == 0, result.output
    target = json.loads(result.stdout)["target"]
    assert target["format"] == "onnx" and "rpi4 prefers tflite" in target["format_reason"]
    said = " ".join(result.stderr.split())  # (wrapped at the runner's 80 columns)
    assert 0 <= said.find("Building onnx for rpi4: rpi4 prefers tflite") < said.find("Loading model"), said[:300]
    assert (tmp_path / "pi" / "model.onnx").is_file()


def test_convert_then_run(assets, tmp_path, digits):
    out = tmp_path / "rpi4"
    result = invoke("convert", assets / "model.pt2", "--device", "rpi4", "--calib", assets / "calib.npz",
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == {**report["target"], "format": "tflite", "precision": "int8"}
    assert report["verification"]["passed"] is True
    ran = invoke("run", out, "--input", assets / "test.npz", "--output", tmp_path / "out.npz")
    assert ran.exit_code == 0, ran.output
    with np.load(tmp_path / "out.npz") as npz:
        logits = npz["output"]
    assert logits.shape == (len(digits.x_test), 10)
    assert (logits.argmax(1) == digits.y_test).mean() > 0.95
    again = invoke("run", out, "--input", assets / "test.npz", "--output", tmp_path / "out.npz")
    assert again.exit_code == 1 and "--force" in again.output


def _bad_calib(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _pickle(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _scaled(src, dst):
    with np.load(src) as data:
        np.savez(dst, **{k: data[k] * 255 if k != "labels" else data[k] for k in data.files})
    return dst


BAD = {
    "missing file": (lambda a, t: ["convert", t / "nope.pt2"], "does not exist"),
    "not a model": (lambda a, t: ["convert", (t / "x.onnx").write_text("hi") and t / "x.onnx"], "not a valid ONNX model"),
    "truncated onnx": (lambda a, t: ["convert", _truncated(a / "model.onnx", t / "m.onnx")], "corrupt"),
    "truncated pt2": (lambda a, t: ["convert", _truncated(a / "model.pt2", t / "m.pt2")], "corrupt"),
    "tflite as input": (lambda a, t: ["convert", (t / "m.tflite").write_bytes(b"TFL3") and t / "m.tflite"], "already a TFLite model"),
    "pickle": (lambda a, t: ["convert", _pickle(t)], "refusing to load model.pt"),
    "unknown device": (lambda a, t: ["convert", a / "model.pt2", "--device", "rpi44"], "did you mean rpi4"),
    "unknown precision": (lambda a, t: ["convert", a / "model.pt2", "--precision", "int4"], "unknown precision 'int4'"),
    "int8 without calib": (lambda a, t: ["convert", a / "model.pt2", "--device", "rpi4", "--precision", "int8"], "needs calibration data"),
    "calib wrong name": (lambda a, t: ["convert", a / "model.pt2", "--calib",
                                       _bad_calib(t, a1=np.zeros((40, 1, 8, 8), np.float32), a2=np.zeros((40, 1, 8, 8), np.float32))],
                         "no array for input input"),
    "calib wrong shape": (lambda a, t: ["convert", a / "model.pt2", "--calib", _bad_calib(t, x=np.zeros((40, 1, 6, 6), np.float32))],
                          "dimension 2 must be 8"),
    "calib wrong dtype": (lambda a, t: ["convert", a / "model.pt2", "--calib", _bad_calib(t, x=np.zeros((40, 1, 8, 8), np.uint8))],
                          "must be a float array, got uint8"),
    "max-drop without labels": (lambda a, t: ["convert", a / "model.pt2", "--calib", a / "calib.npz", "--eval",
                                              a / "test.npz", "--max-drop", "0.5"], "--max-drop needs labels"),
    "budget out of range": (lambda a, t: ["convert", a / "model.pt2", "--max-drop", "-1"], "points of top-1 accuracy"),
    "nothing fits": (lambda a, t: ["convert", a / "model.pt2", "--device", "coral", "--calib", a / "calib.npz",
                                   "--min-cosine", "0.99999"], "Tried: int8 static minmax: over budget"),
    "calib 0-255": (lambda a, t: ["convert", a / "model.pt2", "--calib", _scaled(a / "calib.npz", t / "c.npz"),
                                  "--eval", a / "eval.npz"], "preprocessed differently"),
    "analyze without data": (lambda a, t: ["analyze", a / "model.pt2"], "pass --calib"),
    "analyze bad mode": (lambda a, t: ["analyze", a / "model.pt2", "--calib", a / "calib.npz", "--mode", "fancy"],
                         "unknown int8 mode 'fancy'"),
    "onnx to tflite": (lambda a, t: ["convert", a / "model.onnx", "--format", "tflite", "--precision", "fp32"],
                       "an ONNX model cannot be converted to tflite; use --format onnx"),
    "onnx for coral": (lambda a, t: ["convert", a / "model.onnx", "--device", "coral", "--calib", a / "calib.npz"],
                       "coral-edgetpu runs only tflite models, and an ONNX model cannot be converted to tflite"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_1_and_no_partial_bundle(assets, tmp_path, case, no_leftovers):
    build, message = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    args = build(assets, work)
    result = invoke(*args, "--out", tmp_path / "bundle")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert no_leftovers(tmp_path, "bundle")


def test_existing_output_folder_is_refused_without_force(assets, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("convert", assets / "model.pt2", "--precision", "fp32", "--out", out)
    assert result.exit_code == 1 and "already exists: pass --force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    forced = invoke("convert", assets / "model.pt2", "--precision", "fp32", "--out", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert not list(tmp_path.glob(".bundle.*"))


def test_verification_failure_leaves_nothing_behind(assets, tmp_path, no_leftovers):
    # fp16 cannot reach a cosine of exactly 1.0 on every sample: the check must fail loudly.
    result = invoke("convert", assets / "model.pt2", "--device", "x86-64", "--precision", "fp16",
                    "--calib", assets / "calib.npz", "--min-cosine", "1.0", "--out", tmp_path / "bundle")
    assert result.exit_code == 1
    assert "does not match the original" in result.output
    assert no_leftovers(tmp_path, "bundle")


def test_onnx_layers_are_named_after_their_weights_module(assets):
    from edgec.converters import converter_for

    layers = converter_for("onnx").layers(assets / "model.onnx")  # BatchNorm folded into each conv
    assert [(layer.display, layer.op) for layer in layers] == [("0", "Conv"), ("3", "Conv"), ("7", "Conv"),
                                                               ("12", "Gemm")]


def test_run_rejects_inputs_that_do_not_fit(bundles, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    result = invoke("run", bundles("onnx", "fp32").bundle, "--input", tmp_path / "bad.npz")
    assert result.exit_code == 1 and "dimension 1 must be 1" in result.output


def test_analyze_writes_table_markdown_and_png(assets, tmp_path):
    out = tmp_path / "sens"
    result = invoke("analyze", assets / "model.pt2", "--device", "rpi4", "--calib", assets / "calib.npz",
                    "--eval", assets / "eval.npz", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Per-layer sensitivity (int8 static minmax)" in result.stdout
    data = json.loads((out / "sensitivity.json").read_text())
    errors = [layer["error"] for layer in data["layers"]]
    assert len(errors) == 4 and errors == sorted(errors, reverse=True) and min(errors) >= 0
    assert {layer["op"] for layer in data["layers"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    # Each layer is named after the module holding its weights (not the BatchNorm or ReLU fused after it),
    # and ops by their plain names.
    assert sorted(layer["display"] for layer in data["layers"]) == ["0 (Conv2d)", "12 (Linear)", "3 (Conv2d)",
                                                                    "7 (Conv2d)"], data["layers"]
    assert "TFLOperationName" not in result.stdout and "ReLU" not in result.stdout
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Per-layer sensitivity" in (out / "sensitivity.md").read_text()


@pytest.fixture(scope="module")
def factory_weights(digits_model, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(path))
    return path


def test_compress_factory_with_distillation_then_convert(assets, factory_weights, tmp_path):
    out = tmp_path / "small.pt2"
    result = invoke("compress", "edgec.sdk.examples.zoo:digits_cnn", "--weights", factory_weights, "--data", assets / "calib.npz",
                    "--eval", assets / "eval.npz", "--prune", "0.5", "--structured", "--epochs", "1", "--threads", "1",
                    "--distill-from", "edgec.sdk.examples.zoo:digits_cnn", "--teacher-weights", factory_weights, "--out", out)
    assert result.exit_code == 0, result.output
    assert "channels −50%" in result.stdout
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["summary"]["params_vs_original"] < 0.35
    import torch

    assert report["trained_on"].startswith("cuda" if torch.cuda.is_available() else "cpu")  # --train-device auto
    converted = invoke("convert", out, "--device", "x86-64", "--precision", "fp32", "--out", tmp_path / "b")
    assert converted.exit_code == 0, converted.output


def test_compress_takes_pt2_files_as_teacher_and_as_student(assets, factory_weights, tmp_path):
    """The help says --distill-from takes the same forms as MODEL: a .pt2 teacher must work,
    and a .pt2 student trains (unstructured pruning keeps its graph)."""
    result = invoke("compress", "edgec.sdk.examples.zoo:digits_cnn", "--weights", factory_weights, "--data",
                    assets / "calib.npz", "--eval", assets / "eval.npz", "--prune", "0.25", "--epochs", "1",
                    "--threads", "1", "--distill-from", assets / "model.pt2", "--out", tmp_path / "a.pt2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert report["title"].endswith("distilled from " + str(assets / "model.pt2"))
    assert report["steps"][-1]["accuracy"] >= 0.9
    result = invoke("compress", assets / "model.pt2", "--unstructured", "--data", assets / "calib.npz", "--prune",
                    "0.5", "--epochs", "1", "--threads", "1", "--distill-from", assets / "model.pt2",
                    "--out", tmp_path / "b.pt2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b.report.json").read_text())["summary"]["weight_sparsity"] >= 0.45


COMPRESS_BAD = {
    "sparsity 1": (["--prune", "1"], "outside [0, 1)"),
    "unknown layer": (["--skip", "33"], "did you mean 3"),
    "bad feature pair": (["--feature", "3"], "must look like student_layer=teacher_layer"),
    "teacher mismatch": ([], "teacher 1 outputs [2, 5] but the student outputs [2, 10]"),
    "onnx model": ([], "is not a PyTorch model"),
    "unknown train device": (["--train-device", "tpu"], "--train-device 'tpu' is not one of auto, cpu, cuda"),
}


@pytest.mark.parametrize("case", sorted(COMPRESS_BAD))
def test_compress_bad_input_is_one_line_exit_1(assets, factory_weights, tmp_path, case):
    extra, message = COMPRESS_BAD[case]
    model = assets / "model.onnx" if case == "onnx model" else "edgec.sdk.examples.zoo:digits_cnn"
    weights = [] if case == "onnx model" else ["--weights", factory_weights]
    if case == "teacher mismatch":  # digits_mlp has 10 classes too; give it a 5-class head instead
        extra = ["--distill-from", "tests_fixtures_five:model"]
    result = invoke("compress", model, *weights, "--data", assets / "calib.npz", "--out", tmp_path / "x.pt2",
                    "--epochs", "1", *extra)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not list(tmp_path.glob("x*"))


def test_serve_runs_until_sigterm_and_exits_cleanly(bundles, tmp_path, digits):
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    config = tmp_path / "runtime.toml"
    config.write_text(f'port = 0\nbudget_mb = 128\n[[models]]\nname = "digits"\npath = "{bundles("onnx", "fp32").bundle}"\n')
    proc = subprocess.Popen([sys.executable, "-c", "from edgec.cli import main; main()", "serve", "--config", str(config)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"on (http://[\d.]+:\d+)", line)
            url = found.group(1) if found else None
        assert url, "server did not announce its address"
        body = json.dumps({"inputs": digits.x_test[:2].tolist()}).encode()
        req = urllib.request.Request(url + "/v1/models/digits/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200 and len(json.loads(resp.read())["outputs"]["output"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # The HTTP server finished before the process did. (A SIGTERM raised as KeyboardInterrupt inside a join()
    # on the server's thread made CPython mark that thread ended while it ran on: the process exited under a
    # live event loop, and about one time in ten segfaulted in interpreter shutdown.)
    assert "Finished server process" in proc.stderr.read()


def test_serve_takes_a_bundle_folder_alone(bundles, tmp_path, digits):
    """`edgec serve build/x --port N`: no config file for a first try; the model is named after the folder."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    bundle = tmp_path / "mynet"
    shutil.copytree(bundles("onnx", "fp32").bundle, bundle)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgec", "serve", str(bundle), "--port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline, answer = time.time() + 60, None
        while answer is None and time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/mynet", timeout=5) as resp:
                    answer = json.loads(resp.read())
            except OSError:
                time.sleep(0.2)
        assert answer is not None and answer["name"] == "mynet", proc.stderr.read() if proc.poll() else answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_to_start_with_no_model_it_can_serve(tmp_path, bundles):
    config = tmp_path / "runtime.toml"
    config.write_text('port = 0\n[[models]]\nname = "digits"\npath = "build/never-converted"\n')
    result = invoke("serve", "--config", config)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: no model can be served: digits: bundle folder {tmp_path / 'build/never-converted'} does not exist: "
        f"write it with edgec convert ... --out {tmp_path / 'build/never-converted'}, or fix the model's path "
        "(fix the paths, or pass --allow-empty to start without them)"]
    empty = tmp_path / "empty.toml"
    empty.write_text("port = 0\n")
    assert "pass --allow-empty" in invoke("serve", "--config", empty).output
    assert "nothing to serve" in invoke("serve").output


def test_serve_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "runtime.toml"
    bad.write_text('port = 8080\nbudget = 5\n')
    result = invoke("serve", "--config", bad)
    assert result.exit_code == 1 and "unknown config key(s): budget" in result.output
    assert "does not exist" in invoke("serve", "--config", tmp_path / "nope.toml").output


@pytest.mark.parametrize("where", ["file in the path", "proc"])
def test_an_output_path_that_cannot_be_written_is_one_line(assets, tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out" if where == "file in the path" else "/proc/edgec-bundle"
    result = invoke("convert", assets / "model.pt2", "--precision", "fp32", "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--out" in lines[0] and "Traceback" not in result.output, result.output
    assert (tmp_path / "afile").read_text() == "x"


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folders_left_by_a_killed_convert_are_swept_by_the_next(assets, tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".bundle.staging-{dead}-0123abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    replaced = tmp_path / f".bundle.old-{dead}-4567cdef"  # killed between moving the old one aside and the rename
    replaced.mkdir()
    (replaced / "manifest.json").write_text("{}")
    mine = tmp_path / f".bundle.staging-{__import__('os').getpid()}-89abcdef"  # a live run's: left alone
    mine.mkdir()
    result = invoke("convert", assets / "model.pt2", "--precision", "fp32", "--out", tmp_path / "bundle", "--force")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not replaced.exists() and mine.exists()
    assert (tmp_path / "bundle" / "manifest.json").read_text() != "{}"  # restored, then replaced by --force


def test_a_killed_run_s_replaced_bundle_is_restored_not_lost(tmp_path):
    from edgec.sdk.bundle.writer import sweep_stale

    dead = _dead_pid()
    (tmp_path / f".bundle.old-{dead}-4567cdef").mkdir()
    (tmp_path / f".bundle.old-{dead}-4567cdef" / "manifest.json").write_text('{"v": 1}')
    (tmp_path / f".bundle.staging-{dead}-0123abcd").mkdir()
    assert [p.name for p in sweep_stale(tmp_path / "bundle")] == [f".bundle.staging-{dead}-0123abcd"]
    assert (tmp_path / "bundle" / "manifest.json").read_text() == '{"v": 1}'


def test_verify_passes_a_good_bundle_and_says_it_is_unsigned(bundles, tmp_path):
    import shutil

    good = bundles("onnx", "fp32").bundle
    result = invoke("verify", good)
    assert result.exit_code == 0, result.output
    assert "✓ manifest" in result.output and "✓ files" in result.output and "✓ model" in result.output
    assert "- signature: not signed" in result.output
    tampered = tmp_path / "tampered"
    shutil.copytree(good, tampered)
    model = tampered / "model.onnx"
    model.write_bytes(model.read_bytes()[:-4] + b"edgc")
    result = invoke("verify", tampered)
    assert result.exit_code == 1 and "✗ files" in result.output and "sha256" in result.output
    assert "✓ model" not in result.output and "✗ model" not in result.output  # not loaded: its hash failed


def test_next_steps_name_this_edgec_when_the_venv_is_not_activated(tmp_path):
    """./scripts/quickstart.sh runs .venv/bin/edgec without activating the venv: its next commands must run
    as printed, so `edgec` is written as the path of the one that ran."""
    import subprocess
    import sys
    from pathlib import Path

    code = "from edgec.cli.models import _runnable; print(_runnable('edgec serve --config qs/runtime.toml'))"
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin"}, check=True).stdout.strip()
    program, rest = bare.split(" ", 1)
    assert rest == "serve --config qs/runtime.toml"
    assert (tmp_path / program).resolve() == (Path(sys.executable).parent / "edgec").resolve()
    on_path = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                             env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}, check=True).stdout.strip()
    assert on_path == "edgec serve --config qs/runtime.toml"
