"""Signed bundles and the golden parity check, on real bundles, real keys and a real server."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgec.cli import app
from edgec.errors import BundleError, IntegrityError, ValidationError
from edgec.runtime.config import ServeConfig
from edgec.runtime.bundle.probe import probe
from edgec.runtime.serve.runtime import Runtime
from edgec.runtime.bundle.signing import TrustedKeys, verify_signature
from edgec.sdk.bundle.sign import new_keys, sign_bundle
from helpers.boards import resum

runner = CliRunner()


@pytest.fixture
def keys(tmp_path):
    private, public, kid = new_keys(tmp_path / "keys" / "fleet-key")
    other = new_keys(tmp_path / "keys" / "other-key")
    return private, public, kid, other


def _copy(fixture_bundle, tmp_path, name, fmt="onnx", precision="fp32"):
    return shutil.copytree(fixture_bundle(fmt, precision), tmp_path / name)


def test_keys_are_written_private_0600_and_not_overwritten(keys, tmp_path):
    private, public, kid, _ = keys
    assert private.stat().st_mode & 0o777 == 0o600 and b"PUBLIC KEY" in public.read_bytes()
    assert len(kid) == 16 and kid in TrustedKeys.from_files([public]).keys
    with pytest.raises(ValidationError, match="already exists"):
        new_keys(private)
    with pytest.raises(ValidationError, match="private key: give the board the .pub"):
        TrustedKeys.from_files([private])


def test_a_signed_bundle_passes_and_every_kind_of_tampering_is_refused(keys, fixture_bundle, tmp_path):
    private, public, kid, (other_private, other_public, _) = keys
    trusted = TrustedKeys.from_files([public])
    bundle = _copy(fixture_bundle, tmp_path, "signed")
    assert sign_bundle(bundle, private) == kid
    assert verify_signature(bundle, trusted) == kid

    unsigned = _copy(fixture_bundle, tmp_path, "unsigned")
    with pytest.raises(IntegrityError, match="not signed.*edgec sign"):
        verify_signature(unsigned, trusted)

    stranger = _copy(fixture_bundle, tmp_path, "stranger")
    sign_bundle(stranger, other_private)
    with pytest.raises(IntegrityError, match="does not trust"):
        verify_signature(stranger, trusted)

    # Flip model bytes and re-write their sha256 in the manifest: the sums agree, the signature does not.
    edited = shutil.copytree(bundle, tmp_path / "edited")
    model = edited / "model.onnx"
    model.write_bytes(model.read_bytes()[:-4] + b"edgc")
    resum(edited, "model.onnx")
    with pytest.raises(IntegrityError, match="manifest was changed after it was signed"):
        verify_signature(edited, trusted)

    garbled = shutil.copytree(bundle, tmp_path / "garbled")
    (garbled / "manifest.sig").write_text("{not json")
    with pytest.raises(IntegrityError, match="not an edgec signature"):
        verify_signature(garbled, trusted)

    # A file changed without touching the manifest is caught by its sum (signing checks them first, too).
    damaged = shutil.copytree(bundle, tmp_path / "damaged")
    (damaged / "model.onnx").write_bytes(b"\0" * 100)
    with pytest.raises(IntegrityError, match="sha256"):
        sign_bundle(damaged, private)


def test_a_board_with_trusted_keys_serves_only_what_they_signed(keys, fixture_bundle, tmp_path, digits_test):
    private, public, _, (other_private, _, _) = keys
    good = _copy(fixture_bundle, tmp_path, "good")
    sign_bundle(good, private)
    unsigned = _copy(fixture_bundle, tmp_path, "unsigned", "tflite", "int8")
    stranger = _copy(fixture_bundle, tmp_path, "stranger", "tflite", "fp32")
    sign_bundle(stranger, other_private)
    runtime = Runtime(ServeConfig.from_dict({
        "trusted_keys": [str(public)],
        "models": [{"name": "good", "path": str(good)}, {"name": "unsigned", "path": str(unsigned)},
                   {"name": "stranger", "path": str(stranger)}]}))
    try:
        assert "not signed" in runtime.failed["unsigned"] and "does not trust" in runtime.failed["stranger"]
        assert "good" not in runtime.failed
        assert runtime.predict("good", {"input": digits_test.x[:2]})["output"].shape == (2, 10)
    finally:
        runtime.close()


def test_verify_with_a_key_checks_the_signature_first(keys, fixture_bundle, tmp_path):
    private, public, kid, (_, other_public, _) = keys
    bundle = _copy(fixture_bundle, tmp_path, "b", "tflite", "int8")
    sign_bundle(bundle, private)
    result = runner.invoke(app, ["verify", str(bundle), "--key", str(public)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"✓ signature: manifest signed by trusted key {kid}"
    assert "✓ parity: 8 golden sample(s)" in result.output
    result = runner.invoke(app, ["verify", str(bundle), "--key", str(other_public)])
    assert result.exit_code == 1 and "does not trust" in result.output and "model" not in result.output
    result = runner.invoke(app, ["verify", str(bundle)])
    assert result.exit_code == 0 and f"signed by key {kid}, not checked" in result.output


@pytest.mark.parametrize("fmt,precision", [("onnx", "fp32"), ("tflite", "int8")])
def test_a_board_whose_answers_differ_from_the_host_refuses_the_bundle(fixture_bundle, tmp_path, fmt, precision):
    bundle = _copy(fixture_bundle, tmp_path, "drifted", fmt, precision)
    assert "golden sample(s) give the host's answers" in probe(bundle)
    # What a board with a different kernel would see: the host's recorded answers and this
    # runtime's disagree. Shift the recorded ones by 10% of their range.
    with np.load(bundle / "golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files}
    golden["output_0"] = golden["output_0"] + 0.1 * np.abs(golden["output_0"]).max()
    np.savez(bundle / "golden.npz", **golden)
    resum(bundle, "golden.npz")
    with pytest.raises(BundleError, match="answers differ from the host's on 8 golden sample"):
        probe(bundle)


def test_keys_new_then_sign_then_verify_through_the_cli(fixture_bundle, tmp_path):
    made = runner.invoke(app, ["keys", "new", "--out", str(tmp_path / "fleet-key")])
    assert made.exit_code == 0, made.output
    private, public = tmp_path / "fleet-key", tmp_path / "fleet-key.pub"
    assert private.stat().st_mode & 0o777 == 0o600 and "keep it secret" in made.output
    kid = TrustedKeys.from_files([public]).keys.popitem()[0]
    again = runner.invoke(app, ["keys", "new", "--out", str(private)])
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    assert private.stat().st_mode & 0o777 == 0o600

    bundle = _copy(fixture_bundle, tmp_path, "b")
    signed = runner.invoke(app, ["sign", str(bundle), "--key", str(private)])
    assert signed.exit_code == 0 and kid in signed.output, signed.output
    assert runner.invoke(app, ["verify", str(bundle), "--key", str(public)]).exit_code == 0
    release = json.loads((bundle / "manifest.json").read_text())["release"]  # the signing time, in ms
    assert abs(release / 1000 - __import__("time").time()) < 60
    assert runner.invoke(app, ["sign", str(bundle), "--key", str(private)]).exit_code == 0  # re-signed: kept
    assert json.loads((bundle / "manifest.json").read_text())["release"] == release
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "release": "9" * 30}))
    bad = runner.invoke(app, ["verify", str(bundle)])
    assert bad.exit_code == 1 and "release" in bad.output and "whole number" in bad.output, bad.output
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    wrong = runner.invoke(app, ["sign", str(bundle), "--key", str(public)])  # the public half
    assert wrong.exit_code == 1 and len(wrong.output.strip().splitlines()) == 1, wrong.output
    missing = runner.invoke(app, ["sign", str(tmp_path / "nope"), "--key", str(private)])
    assert missing.exit_code == 1 and "nope" in missing.output and not (tmp_path / "nope").exists()
