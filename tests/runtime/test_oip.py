"""The Open Inference Protocol (KServe v2) with the real client users have: Triton's ``tritonclient``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgec.runtime import load
from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = {"digits": ("onnx", "fp32"), "digits-int8": ("tflite", "int8"), "digits-onnx-int8": ("onnx", "int8")}


@pytest.fixture(scope="module")
def served(fixture_bundle):
    config = ServeConfig.from_dict({
        "port": 0, "batcher": {"max_batch_size": 16, "max_queue_delay_ms": 2},
        "models": [{"name": name, "path": str(fixture_bundle(*case))} for name, case in MODELS.items()]})
    server = Server(config).start()
    yield server
    server.stop()


@pytest.fixture
def client(served):
    host, port = served.address
    triton = httpclient.InferenceServerClient(url=f"{host}:{port}", connection_timeout=10, network_timeout=30)
    yield triton
    triton.close()


def _input(x: np.ndarray, binary: bool, name: str = "input", datatype: str = "FP32"):
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgec" and "binary_tensor_data" in meta["extensions"]
    assert all(client.is_model_ready(name) for name in MODELS)
    assert not client.is_model_ready("nope")


def test_model_metadata_comes_from_the_manifest(client, fixture_bundle):
    for name, case in MODELS.items():
        meta = client.get_model_metadata(name)
        manifest = load(fixture_bundle(*case)).manifest
        assert meta["name"] == name and meta["versions"] == [manifest.files[manifest.model_file][:12]]
        assert meta["platform"] == {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}[case[0]]
        # A TFLite model exported with a batch of 1 is served at any batch: -1, as ONNX's dynamic batch.
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    version = client.get_model_metadata("digits")["versions"][0]
    assert client.get_model_metadata("digits", model_version=version)["name"] == "digits"
    with pytest.raises(InferenceServerException, match="no version"):
        client.get_model_metadata("digits", model_version="123")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_gives_the_same_numbers_as_the_runtime(client, fixture_bundle, digits_test, binary):
    x = digits_test.x[:7]
    for name, case in MODELS.items():
        expected = load(fixture_bundle(*case)).predict(x)["output"]
        result = client.infer(name, [_input(x, binary)],
                              outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)],
                              request_id="r-7")
        np.testing.assert_array_equal(result.as_numpy("output"), expected)
        response = result.get_response()
        assert response["model_name"] == name and response["id"] == "r-7"
    # No outputs named: every output comes back (binary, as tritonclient asks).
    both = client.infer("digits", [_input(x, binary)])
    np.testing.assert_array_equal(both.as_numpy("output"),
                                  load(fixture_bundle("onnx", "fp32")).predict(x)["output"])
    version = client.get_model_metadata("digits")["versions"][0]
    assert client.infer("digits", [_input(x, binary)], model_version=version).as_numpy("output").shape == (7, 10)


def test_bad_infer_requests_are_refused_with_the_reason(client, digits_test):
    x = digits_test.x[:2]
    cases = [
        ([_input(x.astype(np.int64), True, datatype="INT64")], "model takes FP32"),
        ([_input(x, True, name="pixels")], "unknown input 'pixels'"),
        ([_input(x[:, :, :4], True)], "dimension 2 must be 8"),
        ([_input(x, True), _input(x, True)], "given twice"),
    ]
    for inputs, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            client.infer("digits", inputs)
    with pytest.raises(InferenceServerException, match="unknown output"):
        client.infer("digits", [_input(x, True)], outputs=[httpclient.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [_input(x, True)])
    assert client.infer("digits", [_input(x, True)]).as_numpy("output").shape == (2, 10)  # still serving


def test_plain_json_as_curl_sends_it(served, fixture_bundle, digits_test):
    x = digits_test.x[:3]
    body = {"id": "1", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    request = urllib.request.Request(f"{served.url}/v2/models/digits/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    (output,) = answer["outputs"]
    assert output["name"] == "output" and output["datatype"] == "FP32" and output["shape"] == [3, 10]
    expected = load(fixture_bundle("onnx", "fp32")).predict(x)["output"]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(3, 10), expected, rtol=1e-6)
    body["inputs"][0]["data"] = x.reshape(-1).tolist()[:-1]  # one value short of the shape
    request = urllib.request.Request(f"{served.url}/v2/models/digits/infer", data=json.dumps(body).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400 and "do not fill shape" in json.loads(refused.value.read())["error"]


@pytest.mark.parametrize("where", ["request", "input", "output"])
def test_parameters_of_the_wrong_type_are_a_400(served, digits_test, where):
    x = digits_test.x[:1]
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    if where == "request":
        body["parameters"] = ["binary_data_output"]
    elif where == "input":
        body["inputs"][0]["parameters"] = ["binary_data_size", 4]
    else:
        body["outputs"] = [{"name": "output", "parameters": "binary"}]
    request = urllib.request.Request(f"{served.url}/v2/models/digits/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400 and "must be a JSON object" in json.loads(refused.value.read())["error"]
