"""Shared fixtures.

Two kinds:

- Committed fixture bundles and test digits (``tests/fixtures``), for the runtime tests:
  they need nothing but ``edgec[runtime]``, as on a board.
- A CNN trained on real digits, its exports, sample files and freshly converted bundles,
  for the SDK, converter and CLI tests: these need torch, and skip without it.

Expensive things are built once per session; tests copy what they mutate.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgec.runtime.system import host_arch

FIXTURES = Path(__file__).parent / "fixtures"
FAST = {"latency_budget_s": 0.05}


@pytest.fixture(scope="session")
def system_tool():
    """``system_tool(name, package)``: the path of a program from a Debian package a test runs.

    Missing where apt-get exists is a failure (``scripts/bootstrap.sh`` installs it); the test
    skips, with one line saying so, only on a machine without apt-get.
    """

    def find(name: str, package: str) -> str:
        path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()),
                                          None)
        if path is not None:
            return path
        if shutil.which("apt-get"):
            pytest.fail(f"{name} is not installed: run scripts/bootstrap.sh (it runs apt-get install {package})")
        pytest.skip(f"{name} is not installed and this machine has no apt-get to install Debian's {package}")

    return find


# -- board side: committed bundles, no torch ----------------------------------------------------
@pytest.fixture(scope="session")
def fixture_bundle():
    """``fixture_bundle(fmt, precision)``: a committed digits-CNN bundle (onnx/tflite, fp32/int8)."""

    def get(fmt: str, precision: str) -> Path:
        # ONNX bundles are converted for this host's kind of board (x86-64 or rpi4): the boards tests start
        # run here, and one refuses a bundle built for another architecture.
        native = "-aarch64" if fmt == "onnx" and host_arch() == "aarch64" else ""
        path = FIXTURES / "bundles" / f"{fmt}-{precision}{native}"
        assert path.is_dir(), f"no fixture bundle {path.name}: run tests/fixtures/build.py"
        return path

    return get


@pytest.fixture(scope="session")
def foreign_bundle():
    """A committed bundle converted for a board of another architecture than this host's."""
    return FIXTURES / "bundles" / ("onnx-int8" if host_arch() == "aarch64" else "tflite-int8")


@pytest.fixture(scope="session")
def digits_test():
    """The 450 held-out test digits (``x`` NCHW float32 in [0, 1], ``y`` labels)."""
    with np.load(FIXTURES / "digits-test.npz") as npz:
        return SimpleNamespace(x=npz["x"], y=npz["labels"])


@pytest.fixture
def crashing_bundle(tmp_path, fixture_bundle):
    """A copy of the TFLite fp32 bundle whose model segfaults LiteRT at load (sha256 re-computed).

    Bytes 16..19 (the root table's first field offset) zeroed, the damage a fuzz run found; it
    crashes LiteRT whatever the process's memory layout. The fixture checks that a plain load
    really dies of it, so the tests using it test isolation and not a lucky refusal.
    """
    import hashlib
    import json
    import shutil
    import subprocess
    import sys

    bundle = tmp_path / "crashing"
    shutil.copytree(fixture_bundle("tflite", "fp32"), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = bundle / manifest["model_file"]
    data = bytearray(model.read_bytes())
    data[16:20] = bytes(4)
    model.write_bytes(bytes(data))
    manifest["files"][manifest["model_file"]] = hashlib.sha256(bytes(data)).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    plain = subprocess.run([sys.executable, "-c", f"from edgec.runtime import load; load({str(bundle)!r}).warm_up()"],
                           capture_output=True)
    assert plain.returncode < 0, "the damaged fixture no longer crashes LiteRT: find another offset with fuzz.py"
    return bundle


# -- host side: trained models and fresh conversions (torch) -------------------------------------
@pytest.fixture(scope="session")
def digits():
    pytest.importorskip("sklearn")
    from edgec.sdk.examples.zoo import digits_splits

    return digits_splits()


@pytest.fixture(scope="session")
def digits_model(digits):
    pytest.importorskip("torch")
    from edgec.sdk.examples.zoo import digits_cnn, seeded, train

    return train(seeded(digits_cnn), digits.x_train, digits.y_train, epochs=6)


@pytest.fixture(scope="session")
def torch_accuracy(digits_model, digits):
    from edgec.sdk.examples.zoo import evaluate_accuracy

    return evaluate_accuracy(digits_model, digits.x_test, digits.y_test)


@pytest.fixture(scope="session")
def assets(tmp_path_factory, digits_model, digits) -> Path:
    """model.pt2, model.onnx, calib.npz (with labels), test.npz, eval.npz (test with labels) in one folder."""
    from edgec import convert
    from edgec.sdk.examples.zoo import export_pt2

    root = tmp_path_factory.mktemp("assets")
    export_pt2(digits_model, digits.x_train, root / "model.pt2")
    np.savez(root / "calib.npz", x=digits.x_calib, labels=digits.y_calib)
    np.savez(root / "test.npz", x=digits.x_test)
    np.savez(root / "eval.npz", x=digits.x_test, labels=digits.y_test)
    onnx_bundle = convert(root / "model.pt2", device="x86-64", precision="fp32", out=root / "onnx-fp32", **FAST)
    (root / "model.onnx").write_bytes((onnx_bundle.bundle / "model.onnx").read_bytes())
    return root


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, assets):
    """One freshly converted bundle per (format, precision), built lazily and cached for the session."""
    from edgec import convert

    root = tmp_path_factory.mktemp("bundles")
    built: dict[tuple[str, str], object] = {}
    devices = {"onnx": "x86-64", "tflite": "rpi4"}

    def get(fmt: str, precision: str):
        key = (fmt, precision)
        if key not in built:
            built[key] = convert(
                assets / "model.pt2", device=devices[fmt], format=fmt, precision=precision,
                calib=assets / "calib.npz", out=root / f"{fmt}-{precision}", **FAST,
            )
        return built[key]

    return get


@pytest.fixture
def no_leftovers():
    """Check that neither a bundle nor any staging folder for it exists under a parent."""

    def check(parent: Path, name: str) -> bool:
        return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))

    return check
