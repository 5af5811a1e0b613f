"""The Open Inference Protocol over gRPC with the real client: tritonclient.grpc, and tritonclient's own generated stub
for typed contents. Outputs equal edgec.load(...).predict; the HTTP server's cache, batchers, checks and /metrics serve
both; the repository extension works over gRPC behind the admin token."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from edgec.runtime import load
from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server

grpcclient = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = {"digits": ("onnx", "fp32"), "digits-int8": ("tflite", "int8"), "digits-onnx-int8": ("onnx", "int8")}
TOKEN = "grpc-admin-token-0123456789"


@pytest.fixture(scope="module")
def served(fixture_bundle):
    config = ServeConfig.from_dict({
        "port": 0, "admin_token": TOKEN, "max_request_mb": 1, "grpc": {"port": 0},
        "models": [{"name": name, "path": str(fixture_bundle(*case))} for name, case in MODELS.items()]})
    server = Server(config).start()
    yield server
    server.stop()


@pytest.fixture
def client(served):
    host, port = served.grpc_address
    triton = grpcclient.InferenceServerClient(url=f"{host}:{port}")
    yield triton
    triton.close()


def infer(client, model: str, x: np.ndarray, **kwargs):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], **kwargs)


def test_health_and_metadata_match_the_http_api(client, served):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "edgec" and "model_repository" in meta["extensions"]
    assert all(client.is_model_ready(name) for name in MODELS) and not client.is_model_ready("nope")
    for name in MODELS:
        over_grpc = client.get_model_metadata(name, as_json=True)
        with urllib.request.urlopen(f"{served.url}/v2/models/{name}", timeout=10) as resp:
            import json

            over_http = json.loads(resp.read())
        assert over_grpc["versions"] == over_http["versions"] and over_grpc["platform"] == over_http["platform"]
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_grpc["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in over_http["inputs"]]


@pytest.mark.parametrize("name", list(MODELS))
def test_raw_contents_give_what_predict_gives(client, fixture_bundle, digits_test, name):
    x = digits_test.x[:16]
    result = infer(client, name, x, request_id="r-7")
    want = load(fixture_bundle(*MODELS[name])).predict({"input": x})["output"]
    np.testing.assert_array_equal(result.as_numpy("output"), want)
    assert result.get_response().id == "r-7"


def test_typed_contents_with_tritonclients_own_stub(served, fixture_bundle, digits_test):
    """ModelInfer with InferTensorContents (what generated clients in other languages often send) comes back typed."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    host, port = served.grpc_address
    x = digits_test.x[:3]
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=x.shape)
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
        request.outputs.add(name="output")
        response = stub.ModelInfer(request)
    assert not response.raw_output_contents and response.outputs[0].datatype == "FP32"
    got = np.array(response.outputs[0].contents.fp32_contents, np.float32).reshape(tuple(response.outputs[0].shape))
    np.testing.assert_array_equal(got, load(fixture_bundle("onnx", "fp32")).predict({"input": x})["output"])


def test_bad_calls_get_the_status_that_says_why(client, served, digits_test):
    import grpc

    with pytest.raises(InferenceServerException) as exc:
        infer(client, "nope", digits_test.x[:1])
    assert exc.value.status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("input", [1, 1, 8, 8], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.int32))
    with pytest.raises(InferenceServerException) as exc:
        client.infer("digits", [wrong])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "FP32" in exc.value.message()
    short = grpcclient.InferInput("input", [2, 1, 8, 8], "FP32")
    short.set_data_from_numpy(np.zeros((2, 1, 8, 8), np.float32))
    short._raw_content = short._raw_content[:100]  # fewer bytes than the shape says
    with pytest.raises(InferenceServerException) as exc:
        client.infer("digits", [short])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "raw bytes" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:  # 2 MB against a 1 MB max_request_mb
        infer(client, "digits", np.zeros((8192, 1, 8, 8), np.float32))
    assert exc.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
    with pytest.raises(InferenceServerException) as exc:
        one = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32").set_data_from_numpy(digits_test.x[:1])
        client.infer("digits", [one], outputs=[grpcclient.InferRequestedOutput("nothing")])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "unknown output nothing" in exc.value.message()
    assert infer(client, "digits", digits_test.x[:1]).as_numpy("output").shape == (1, 10)  # still serving
    with urllib.request.urlopen(f"{served.url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'edgec_grpc_responses_total{method="ModelInfer",code="OK"}' in metrics
    assert 'edgec_grpc_responses_total{method="ModelInfer",code="NOT_FOUND"} 1' in metrics


def test_the_repository_extension_over_grpc(client, digits_test):
    admin = {"authorization": f"Bearer {TOKEN}"}
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_repository_index()
    assert exc.value.status() == "StatusCode.UNAUTHENTICATED"
    rows = {m["name"]: m for m in client.get_model_repository_index(headers=admin, as_json=True)["models"]}
    assert rows["digits"]["state"] == "READY"
    client.unload_model("digits-onnx-int8", headers=admin)
    assert not client.is_model_ready("digits-onnx-int8")
    with pytest.raises(InferenceServerException):
        infer(client, "digits-onnx-int8", digits_test.x[:1])
    client.load_model("digits-onnx-int8", headers=admin)
    assert client.is_model_ready("digits-onnx-int8")
    assert infer(client, "digits-onnx-int8", digits_test.x[:2]).as_numpy("output").shape == (2, 10)
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("../../etc", headers=admin)
    assert exc.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("digits", headers=admin, config='{"backend": "python"}')
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_board_without_grpcio_says_what_to_install(tmp_path, fixture_bundle):
    code = ("import sys; sys.modules['grpc'] = None\n"
            "from edgec.runtime.config import ServeConfig\nfrom edgec.runtime.server import Server\n"
            f"Server(ServeConfig.from_dict({{'port': 0, 'grpc': {{'port': 0}}, 'models': [{{'name': 'd', "
            f"'path': {str(fixture_bundle('onnx', 'fp32'))!r}}}]}}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "grpcio" in done.stderr and "edgec[grpc]" in done.stderr


def test_the_generated_messages_are_what_the_proto_says():
    """runtime/serve/oip_pb2.py is protoc's output for proto/oip.proto (plus edgec's own descriptor pool)."""
    pytest.importorskip("grpc_tools")
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "scripts" / "grpc-codegen.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
