"""Damaged and edited bundles are refused with a reason; the serving process never loads one that crashes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.errors import BundleError, InputError
from edgec.runtime import load
from edgec.runtime.serve.cache import ModelCache
from edgec.runtime.config import ServeConfig
from edgec.runtime.bundle.probe import probe
from edgec.runtime.serve.runtime import Runtime

from helpers import fuzz


def edited(bundle: Path, out: Path, edit) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _set(path, value):
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


MANIFEST_EDITS = {
    "threads abc": (_set(("device", "threads"), "abc"), "threads"),
    "threads 100000": (_set(("device", "threads"), 100000), "threads"),
    "providers 5": (_set(("device", "execution_providers"), 5), "execution_providers"),
    "unknown provider": (_set(("device", "execution_providers"), ["../../lib.so"]), "execution_providers"),
    "files as a list": (_set(("files",), ["model.tflite"]), "files"),
    "dtype foo": (_set(("inputs", 0, "dtype"), "foo"), "dtype"),
    "onnx: wrong input name": (_set(("inputs", 0, "name"), "image"), "image"),
    "wrong tensor name": (_set(("inputs", 0, "tensor"), "nope"), "nope"),
    "scale 0": (_set(("outputs", 0, "quantization"), {"scale": 0.0, "zero_point": 0}), "quantization"),
    "int8 scale 0": (lambda m: m["outputs"][0].update(dtype="int8", quantization={"scale": 0.0, "zero_point": 0}),
                     "scale"),
    "an extra output": (lambda m: m["outputs"].append(dict(m["outputs"][0], name="extra")), "output"),
    "model file outside": (_set(("model_file",), "../model.tflite"), "model_file"),
    "shape of 10 dims": (_set(("inputs", 0, "shape"), [1] * 10), "shape"),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_edited_manifests_are_refused_naming_the_field(case, fixture_bundle, tmp_path):
    edit, word = MANIFEST_EDITS[case]
    base = fixture_bundle("onnx", "fp32") if case.startswith("onnx:") else fixture_bundle("tflite", "int8")
    bundle = edited(base, tmp_path / "b", edit)
    with pytest.raises(BundleError, match=word):
        load(bundle).warm_up()
    # `edgec run` says the same in one line, exit code 1, no traceback.
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 1, 8, 8), np.float32))
    done = subprocess.run([sys.executable, "-m", "edgec", "run", str(bundle), "-i", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_threads_above_the_cores_are_clamped_not_obeyed(fixture_bundle, tmp_path):
    bundle = edited(fixture_bundle("onnx", "fp32"), tmp_path / "b", _set(("device", "threads"), 1000))
    model = load(bundle)
    import os

    assert model.manifest.threads == 2 * (os.cpu_count() or 1)
    model.warm_up()


def test_a_crashing_model_is_refused_by_the_probe_and_by_the_cache(crashing_bundle, fixture_bundle):
    with pytest.raises(BundleError, match="SIGSEGV"):
        probe(crashing_bundle)
    cache = ModelCache(2**28, isolate=True)
    cache.register("bad", crashing_bundle)
    cache.register("good", fixture_bundle("tflite", "fp32"))
    with pytest.raises(BundleError, match="crashed its backend"):
        cache.get("bad")
    assert cache.get("good").predict(np.zeros((1, 1, 8, 8), np.float32))["output"].shape == (1, 10)
    assert cache.describe()["stats"]["load_failures"] == 1


def test_the_server_starts_with_the_good_bundles_and_names_the_bad(crashing_bundle, fixture_bundle, tmp_path,
                                                                    digits_test):
    bad_dtype = edited(fixture_bundle("onnx", "fp32"), tmp_path / "dtype", _set(("inputs", 0, "dtype"), "foo"))
    runtime = Runtime(ServeConfig.from_dict({"models": [
        {"name": "digits", "path": str(fixture_bundle("onnx", "int8"))},
        {"name": "crashing", "path": str(crashing_bundle)},
        {"name": "dtype", "path": str(bad_dtype)},
    ]}))
    try:
        assert not runtime.ready
        assert "SIGSEGV" in runtime.failed["crashing"] and "dtype" in runtime.failed["dtype"]
        assert set(runtime.stats()["failed"]) == {"crashing", "dtype"}
        rows = {m["name"]: m for m in runtime.models()}
        assert rows["digits"]["loaded"] and rows["crashing"]["error"] and not rows["crashing"]["loaded"]
        out = runtime.predict("digits", {"input": digits_test.x[:4]})["output"]
        assert (out.argmax(1) == digits_test.y[:4]).mean() >= 0.75
    finally:
        runtime.close()


def test_every_request_is_dtype_checked_batched_or_not(fixture_bundle, digits_test):
    runtime = Runtime(ServeConfig.from_dict({"models": [{"name": "d", "path": str(fixture_bundle("onnx", "fp32"))}],
                                             "batcher": {"max_batch_size": 8, "max_queue_delay_ms": 20}}))
    try:
        good = [runtime.submit("d", {"input": digits_test.x[i:i + 1]}) for i in range(4)]
        for dtype in (np.int64, np.uint8, np.bool_):
            with pytest.raises(InputError, match="dtype|float"):
                runtime.submit("d", {"input": np.zeros((1, 1, 8, 8), dtype)})
        assert all(f.result(10)["output"].shape == (1, 10) for f in good)
    finally:
        runtime.close()


def test_fuzzed_bundles_are_refused_or_run_never_untyped_or_crashing():
    """A small run of benchmarks/fuzz.py (the full one is 2,000 cases per format)."""
    results = fuzz.fuzz(25, ["onnx", "tflite"], seed=7)
    for fmt, result in results.items():
        counts = result["counts"]
        assert counts["untyped"] == 0 and counts["crashed"] == 0, (fmt, result["examples"])
        assert counts["refused"] > 0 and counts["ran"] > 0, (fmt, counts)  # the mutations do damage, not all
