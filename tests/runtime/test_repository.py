"""The model repository extension with Triton's own client: index, load and unload by name, behind the admin token,
only bundles the board may load from (its models and model_roots), never a path from the request."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgec.runtime import load
from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "repository-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def board(tmp_path, fixture_bundle):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(fixture_bundle("tflite", "int8"), repo / "digits_tflite")
    shutil.copytree(fixture_bundle("onnx", "int8"), repo / "broken")
    (repo / "broken" / "model.onnx").write_bytes(b"not a model")  # its sha256 no longer matches
    (repo / "notes").mkdir()  # a folder that is not a bundle
    outside = shutil.copytree(fixture_bundle("onnx", "int8"), tmp_path / "outside")
    (repo / "escape").symlink_to(outside, target_is_directory=True)  # a link out of the root
    config = ServeConfig.from_dict({
        "port": 0, "admin_token": TOKEN, "model_roots": [str(repo)],
        "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}]})
    server = Server(config).start()
    host, port = server.address
    client = httpclient.InferenceServerClient(url=f"{host}:{port}", connection_timeout=10, network_timeout=60)
    yield client
    client.close()
    server.stop()


def infer(client, model: str, x: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return client.infer(model, [tensor]).as_numpy("output")


def test_the_index_lists_what_the_board_may_load_and_needs_the_token(board):
    with pytest.raises(InferenceServerException, match="Bearer"):
        board.get_model_repository_index()
    rows = {r["name"]: r for r in board.get_model_repository_index(headers=ADMIN)}
    assert set(rows) == {"digits", "digits_tflite", "broken"}  # not "notes" (no manifest), not "escape" (outside)
    assert rows["digits"]["state"] == "READY" and rows["digits_tflite"]["state"] == "UNAVAILABLE"
    assert rows["digits_tflite"]["reason"] == "not loaded" and len(rows["digits"]["version"]) == 12
    assert "model_repository" in board.get_server_metadata()["extensions"]


def test_load_and_unload_by_name_with_tritonclient(board, fixture_bundle, digits_test):
    x = digits_test.x[:8]
    assert not board.is_model_ready("digits_tflite")
    board.load_model("digits_tflite", headers=ADMIN)
    assert board.is_model_ready("digits_tflite")
    want = load(fixture_bundle("tflite", "int8")).predict({"input": x})["output"]
    np.testing.assert_array_equal(infer(board, "digits_tflite", x), want)
    index = {r["name"]: r["state"] for r in board.get_model_repository_index(headers=ADMIN)}
    assert index == {"digits": "READY", "digits_tflite": "READY", "broken": "UNAVAILABLE"}

    board.unload_model("digits_tflite", headers=ADMIN)
    assert not board.is_model_ready("digits_tflite")
    with pytest.raises(InferenceServerException):
        infer(board, "digits_tflite", x)
    rows = {r["name"]: r for r in board.get_model_repository_index(headers=ADMIN)}
    assert rows["digits_tflite"]["state"] == "UNAVAILABLE" and rows["digits_tflite"]["reason"] == "unloaded"

    board.unload_model("digits", headers=ADMIN)  # a configured model too, and back
    assert not board.is_model_ready("digits")
    board.load_model("digits", headers=ADMIN)
    np.testing.assert_array_equal(infer(board, "digits", x),
                                  load(fixture_bundle("onnx", "fp32")).predict({"input": x})["output"])


def test_what_cannot_be_loaded_is_refused_and_the_rest_serves(board, digits_test):
    with pytest.raises(InferenceServerException, match="sha256"):
        board.load_model("broken", headers=ADMIN)  # refused by the cache's checks: 409 with the reason
    for name in ("escape", "notes", "nobody", "../repo/digits_tflite", "..%2Foutside"):
        with pytest.raises(InferenceServerException, match="404"):  # no such model, or no such route
            board.load_model(name, headers=ADMIN)
    with pytest.raises(InferenceServerException, match="config or files"):
        board.load_model("digits_tflite", headers=ADMIN, config=json.dumps({"backend": "python"}))
    with pytest.raises(InferenceServerException, match="Bearer"):
        board.unload_model("digits")
    with pytest.raises(InferenceServerException, match="Bearer"):
        board.load_model("digits_tflite", headers={"Authorization": "Bearer not-the-token-0123456789"})
    assert board.is_model_ready("digits") and not board.is_model_ready("broken")
    assert infer(board, "digits", digits_test.x[:2]).shape == (2, 10)
