from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.errors import BundleError, InputError, IntegrityError
from edgec.runtime.bundle.manifest import sha256_file

FIXTURES = Path(__file__).parent.parent / "fixtures"

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("torch", "tensorflow", "onnx", "onnxscript", "litert_torch", "ai_edge_quantizer", "edgec.sdk", "edgec.converters")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is blocked: the runtime must not import it")
            return None
    sys.meta_path.insert(0, Block())
    """
)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_runtime_serves_bundles_with_host_frameworks_blocked(fixture_bundle, fmt):
    bundle = fixture_bundle(fmt, "int8")
    script = BLOCKER + textwrap.dedent(
        f"""
        import numpy as np
        import importlib, pkgutil
        import edgec.runtime
        for info in pkgutil.walk_packages(edgec.runtime.__path__, "edgec.runtime."):  # every runtime module
            importlib.import_module(info.name)
        model = edgec.runtime.load({str(bundle)!r})
        x = np.load({str(FIXTURES / "digits-test.npz")!r})["x"]
        out = model.predict(x)["output"]
        assert out.shape == (len(x), 10), out.shape
        from edgec.runtime.config import ServeConfig
        from edgec.runtime.serve.runtime import Runtime
        rt = Runtime(ServeConfig.from_dict({{"models": [{{"name": "m", "path": {str(bundle)!r}}}]}}))
        served = rt.predict("m", {{"input": x[:3]}})["output"]
        assert np.allclose(served, out[:3], atol=1e-5), (served, out[:3])
        rt.close()
        heavy = [m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "onnx") or m.startswith("edgec.sdk")]
        assert not heavy, heavy
        print("ok", out.argmax(1)[:5].tolist())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_import_edgec_and_cli_stay_light():
    script = "import sys, edgec, edgec.cli, edgec.devices\nprint(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorflow', 'litert_torch') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _copy(bundle, tmp_path):
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def test_tampered_model_file_is_refused(fixture_bundle, tmp_path):
    bundle = _copy(fixture_bundle("onnx", "fp32"), tmp_path)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        edgec.load(bundle)


def test_corrupt_model_with_matching_hash_is_refused_by_the_backend(fixture_bundle, tmp_path):
    bundle = _copy(fixture_bundle("tflite", "fp32"), tmp_path)
    model_file = bundle / "model.tflite"
    model_file.write_bytes(model_file.read_bytes()[:2000])
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.tflite"] = sha256_file(model_file)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot load model.tflite"):
        edgec.load(bundle)


def test_missing_file_and_missing_manifest_are_bundle_errors(fixture_bundle, tmp_path):
    bundle = _copy(fixture_bundle("onnx", "fp32"), tmp_path)
    (bundle / "report.md").unlink()
    with pytest.raises(IntegrityError, match="report.md is missing"):
        edgec.load(bundle)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not an edgec bundle"):
        edgec.load(bundle)
    with pytest.raises(BundleError, match="not a bundle folder"):
        edgec.load(tmp_path / "nowhere")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_wrong_inputs_get_clear_errors(fixture_bundle, digits_test, fmt):
    model = edgec.load(fixture_bundle(fmt, "int8"))
    x = digits_test.x[:4]
    with pytest.raises(InputError, match="missing input.*unknown pixels"):
        model.predict({"pixels": x})
    with pytest.raises(InputError, match="dimension 2 must be 8"):
        model.predict(x[:, :, :4, :])
    with pytest.raises(InputError, match="has 3 dimensions"):
        model.predict(x[:, 0])
    with pytest.raises(InputError, match="must be a float array, got uint8"):
        model.predict((x * 16).astype(np.uint8))


def test_batch_of_one_model_serves_any_batch(fixture_bundle, digits_test):
    model = edgec.load(fixture_bundle("tflite", "fp32"))
    assert model.inputs[0].shape[0] == 1
    batched = model.predict(digits_test.x[:7])["output"]
    single = np.concatenate([model.predict(digits_test.x[i : i + 1])["output"] for i in range(7)])
    np.testing.assert_allclose(batched, single, rtol=0, atol=0)


def test_float64_inputs_are_accepted(fixture_bundle, digits_test):
    model = edgec.load(fixture_bundle("onnx", "fp32"))
    a = model.predict(digits_test.x[:3].astype(np.float64))["output"]
    b = model.predict(digits_test.x[:3])["output"]
    np.testing.assert_allclose(a, b, atol=1e-6)
