"""The local API over real HTTP on loopback: real bundles, real onnxruntime and TFLite."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgec.runtime import load
from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server


def call(url, method="GET", body=None, ctype="application/json", headers=None):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(fixture_bundle, tmp_path):
    onnx_dir, tflite_dir = fixture_bundle("onnx", "fp32"), fixture_bundle("tflite", "int8")
    tampered = tmp_path / "tampered"
    shutil.copytree(onnx_dir, tampered)
    model_file = tampered / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-10] + b"0123456789")
    config = ServeConfig.from_dict({
        "port": 0, "budget_mb": 256, "max_request_mb": 1, "admin_token": TOKEN,
        "batcher": {"max_batch_size": 16, "max_queue_delay_ms": 5, "max_queue": 256},
        "models": [{"name": "digits", "path": str(onnx_dir), "pinned": True},
                   {"name": "digits-int8", "path": str(tflite_dir)},
                   {"name": "broken", "path": str(tampered)}],
    })
    server = Server(config).start()
    yield server
    server.stop()


def test_health_models_and_a_refused_tampered_bundle(served):
    assert call(served.url + "/health")[0] == 200
    status, _, body = call(served.url + "/ready")
    assert status == 503 and "sha256" in json.loads(body)["failed"]["broken"]  # refused, and said why
    models = {m["name"]: m for m in json.loads(call(served.url + "/v1/models")[2])["models"]}
    assert models["digits"]["loaded"] and models["digits-int8"]["loaded"] and not models["broken"]["loaded"]
    assert "1, 8, 8" in models["digits"]["inputs"][0]


@pytest.mark.parametrize("name", ["digits", "digits-int8"])
def test_predict_json_npy_npz_match_the_bundle(served, fixture_bundle, digits_test, name):
    x = digits_test.x[:5]
    fmt_precision = ("onnx", "fp32") if name == "digits" else ("tflite", "int8")
    expected = next(iter(load(fixture_bundle(*fmt_precision)).predict(x).values()))
    status, _, body = call(f"{served.url}/v1/models/{name}/predict", "POST", {"inputs": x.tolist()})
    assert status == 200, body
    got = np.array(next(iter(json.loads(body)["outputs"].values())))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    np.save(buf, x)
    status, headers, body = call(f"{served.url}/v1/models/{name}/predict", "POST", buf.getvalue(),
                                 "application/x-npy", {"Accept": "application/x-npz"})
    assert status == 200 and headers["Content-Type"] == "application/x-npz"
    with np.load(io.BytesIO(body)) as npz:
        np.testing.assert_allclose(next(iter(npz.values())), expected, rtol=1e-5, atol=1e-5)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served, digits_test):
    url = served.url + "/v1/models/digits/predict"
    cases = [
        ({"inputs": {"image": digits_test.x[:1].tolist()}}, 400, "unknown image"),
        ({"inputs": np.zeros((1, 1, 6, 6)).tolist()}, 400, "dimension 2 must be 8"),
        ({"inputs": [["a", "b"]]}, 400, "not a rectangular array of numbers"),
        ({"wrong": 1}, 400, '"inputs"'),
    ]
    for body, status, message in cases:
        got, _, raw = call(url, "POST", body)
        assert got == status and message in json.loads(raw)["error"], raw
    assert call(served.url + "/v1/models/nope/predict", "POST", {"inputs": [1]})[0] == 404
    too_big = b"{" + b" " * (2 * 2**20) + b"}"
    status, _, raw = call(url, "POST", too_big)
    assert status == 413 and "limit" in json.loads(raw)["error"]
    assert call(url, "POST", {"inputs": digits_test.x[:1].tolist()})[0] == 200


def test_edge_cases_get_a_4xx_or_valid_json_never_a_500(served):
    url = served.url + "/v1/models/{}/predict"
    deep = b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    status, _, raw = call(url.format("digits"), "POST", deep)
    assert status == 400 and "not JSON" in json.loads(raw)["error"]
    status, _, raw = call(url.format("digits"), "POST", {"inputs": np.zeros((1, 1, 8, 8)).tolist()},
                          headers={"X-Deadline-Ms": "nan"})
    assert status == 400 and "X-Deadline-Ms" in json.loads(raw)["error"]
    empty = io.BytesIO()
    np.save(empty, np.zeros((0, 1, 8, 8), np.float32))
    for name in ("digits", "digits-int8"):
        status, _, raw = call(url.format(name), "POST", empty.getvalue(), "application/x-npy")
        assert status == 400 and "0 samples" in json.loads(raw)["error"]
    # Non-finite outputs: null in JSON (strict parsers refuse a bare NaN), on both protocols.
    status, _, raw = call(url.format("digits"), "POST", {"inputs": np.full((1, 1, 8, 8), 1e38).tolist()})
    assert status == 200 and json.loads(raw, parse_constant=_refuse)["outputs"]["output"][0][0] is None
    oip = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [1e38] * 64}]}
    status, _, raw = call(served.url + "/v2/models/digits/infer", "POST", oip)
    assert status == 200 and json.loads(raw, parse_constant=_refuse)["outputs"][0]["data"][0] is None


def _refuse(constant):
    raise AssertionError(f"bare {constant} in JSON")


def test_reload_to_a_broken_bundle_keeps_the_old_version(served, tmp_path, fixture_bundle, digits_test):
    before = {m["name"]: m for m in json.loads(call(served.url + "/v1/models")[2])["models"]}["digits"]["version"]
    broken = tmp_path / "half"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    status, _, raw = call(served.url + "/v1/models/digits/reload", "POST", {"path": str(broken)}, headers=ADMIN)
    assert status == 409 and "manifest" in json.loads(raw)["error"]
    after = {m["name"]: m for m in json.loads(call(served.url + "/v1/models")[2])["models"]}["digits"]["version"]
    assert after == before
    assert call(served.url + "/v1/models/digits/predict", "POST", {"inputs": digits_test.x[:1].tolist()})[0] == 200
    # A good reload swaps it in.
    status, _, raw = call(served.url + "/v1/models/digits/reload", "POST", {"path": str(fixture_bundle("onnx", "int8"))},
                          headers=ADMIN)
    assert status == 200 and json.loads(raw)["reloaded"]["precision"] == "int8"


def test_reload_needs_the_admin_token_and_a_configured_folder(served, tmp_path, fixture_bundle):
    url = served.url + "/v1/models/digits/reload"
    good = {"path": str(fixture_bundle("onnx", "int8"))}
    status, headers, raw = call(url, "POST", good)
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"] and "admin_token" in json.loads(raw)["error"]
    assert call(url, "POST", good, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    shutil.copytree(fixture_bundle("onnx", "int8"), outside)
    try:
        status, _, raw = call(url, "POST", {"path": str(outside)}, headers=ADMIN)
        assert status == 403 and "model_roots" in json.loads(raw)["error"]
    finally:
        shutil.rmtree(outside)
    (tmp_path / "afile").write_text("x")
    for body, message in [({"path": str(tmp_path / "missing")}, "does not exist"),
                          ({"path": str(tmp_path / "afile")}, "is a file: give the bundle's folder"),
                          ({"path": 5}, "string"), ([1, 2], "JSON object")]:
        status, _, raw = call(url, "POST", body, headers=ADMIN)
        assert status == 400 and message in json.loads(raw)["error"], raw
    # Only configured names: a reload cannot publish a new model under a name of its choosing.
    status, _, raw = call(served.url + "/v1/models/newname/reload", "POST", good, headers=ADMIN)
    assert status == 404
    assert "newname" not in {m["name"] for m in json.loads(call(served.url + "/v1/models")[2])["models"]}


def test_admin_routes_are_off_without_a_token(fixture_bundle):
    config = ServeConfig.from_dict({"port": 0, "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}]})
    server = Server(config).start()
    try:
        status, _, raw = call(server.url + "/v1/models/digits/reload", "POST", {}, headers=ADMIN)
        assert status == 403 and "admin_token" in json.loads(raw)["error"]
    finally:
        server.stop()


def test_a_crashing_bundle_on_reload_is_refused_and_the_server_keeps_serving(served, crashing_bundle, digits_test):
    status, _, raw = call(served.url + "/v1/models/digits-int8/reload", "POST", {"path": str(crashing_bundle)},
                          headers=ADMIN)
    assert status == 409 and "crashed" in json.loads(raw)["error"], raw
    assert call(served.url + "/health")[0] == 200
    for name in ("digits", "digits-int8"):
        assert call(f"{served.url}/v1/models/{name}/predict", "POST", {"inputs": digits_test.x[:2].tolist()})[0] == 200


def test_concurrent_clients_are_batched_and_all_answered(served, fixture_bundle, digits_test):
    expected = next(iter(load(fixture_bundle("onnx", "fp32")).predict(digits_test.x[:64]).values())).argmax(1)

    def one(i):
        status, _, raw = call(served.url + "/v1/models/digits/predict", "POST", {"inputs": digits_test.x[i:i + 1].tolist()})
        return status, int(np.argmax(json.loads(raw)["outputs"]["output"][0])) if status == 200 else raw

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, [i % 64 for i in range(256)]))
    assert all(status == 200 for status, _ in results)
    assert [label for _, label in results] == [int(expected[i % 64]) for i in range(256)]
    stats = json.loads(call(served.url + "/v1/stats")[2])
    sizes = {int(k): v for k, v in stats["batchers"]["digits"]["stats"]["batch_sizes"].items()}
    assert max(sizes) > 1  # requests from different clients shared a batch
    assert stats["latency"]["digits"]["requests"] >= 256 and stats["latency"]["digits"]["p99_ms"] > 0
    metrics = call(served.url + "/metrics")[2].decode()
    assert 'edgec_requests_total{model="digits"}' in metrics and "edgec_cache_hits_total" in metrics


def test_a_full_queue_answers_429_with_a_retry_hint(fixture_bundle, digits_test):
    config = ServeConfig.from_dict({"port": 0, "batcher": {"max_bytes": 100},
                                    "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}]})
    server = Server(config).start()
    try:
        status, headers, raw = call(server.url + "/v1/models/digits/predict", "POST",
                                    {"inputs": digits_test.x[:4].tolist()})
        assert status == 429 and int(headers["Retry-After"]) >= 1 and "busy" in json.loads(raw)["error"]
    finally:
        server.stop()


def test_graceful_stop_drains_queued_requests(fixture_bundle, digits_test):
    config = ServeConfig.from_dict({"port": 0, "batcher": {"max_batch_size": 4, "max_queue_delay_ms": 50},
                                    "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}]})
    server = Server(config).start()
    futures = [server.runtime.batchers["digits"].submit({"input": digits_test.x[i:i + 1]}) for i in range(20)]
    threading.Thread(target=server.stop).start()
    assert all(f.result(timeout=30)["output"].shape == (1, 10) for f in futures)


def _raw(server, payload: bytes, *, read_until_close: bool = True) -> bytes:
    """Send raw bytes on a fresh connection and read what comes back until the server closes."""
    import socket

    host, port = server.address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while read_until_close:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def _npy(x) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def test_malformed_smuggled_and_chunked_requests_get_an_answer_and_the_server_keeps_serving(served, digits_test):
    assert _raw(served, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    body = json.dumps({"inputs": digits_test.x[:1].tolist()}).encode()
    head = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunked = head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert _raw(served, chunked).startswith(b"HTTP/1.1 200 ")  # a real parser takes chunked bodies
    smuggled = head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /ready HTTP/1.1\r\n\r\n"
    assert _raw(served, smuggled).startswith(b"HTTP/1.1 400 ")  # both lengths: refused, nothing smuggled in
    assert _raw(served, b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431 ")
    assert _raw(served, b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert call(served.url + "/v1/models/digits/predict", "POST", {"inputs": digits_test.x[:1].tolist()})[0] == 200


def test_keep_alive_requests_are_answered_in_order_on_one_connection(served, digits_test):
    bodies = [_npy(digits_test.x[i:i + 1]) for i in range(3)]
    pipelined = b"".join(
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        b"Accept: application/x-npz\r\nContent-Length: %d\r\n\r\n" % len(b) + b for b in bodies)
    pipelined += b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _raw(served, pipelined)
    parts = answer.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200"] * 4
    want = load(served.config.models[0].path).predict(digits_test.x[:3])["output"]
    for i, part in enumerate(parts[:3]):
        with np.load(io.BytesIO(part.split(b"\r\n\r\n", 1)[1]), allow_pickle=False) as npz:
            np.testing.assert_allclose(npz["output"], want[i:i + 1], rtol=1e-5, atol=1e-5)
    assert parts[3].endswith(b'{"status": "ok"}')


def test_expect_100_continue_is_honoured_and_oversized_bodies_are_refused_before_sending(served, digits_test):
    import http.client

    body = _npy(digits_test.x[:1])
    conn = http.client.HTTPConnection(*served.address, timeout=10)
    conn.putrequest("POST", "/v1/models/digits/predict")
    for k, v in (("Content-Type", "application/x-npy"), ("Content-Length", str(len(body))),
                 ("Expect", "100-continue")):
        conn.putheader(k, v)
    conn.endheaders()
    interim = conn.sock.recv(64)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(body)
    resp = conn.getresponse()
    assert resp.status == 200 and len(json.loads(resp.read())["outputs"]["output"][0]) == 10
    conn.close()
    too_big = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (
        5 * 2**20)
    assert _raw(served, too_big).startswith(b"HTTP/1.1 413 ")


def test_a_client_that_hangs_up_mid_request_harms_nobody(served, digits_test):
    import socket

    body = _npy(digits_test.x[:1])
    head = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\nContent-Length: %d\r\n\r\n"
    for payload in (head % len(body) + body[:10], head % len(body) + body):  # mid-body, and before the answer
        sock = socket.create_connection(served.address, timeout=10)
        sock.sendall(payload)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset, not FIN
        sock.close()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: call(served.url + "/v1/models/digits/predict", "POST",
                                             {"inputs": digits_test.x[i:i + 1].tolist()})[0], range(8)))
    assert codes == [200] * 8


def test_stop_answers_http_requests_already_in_flight(fixture_bundle, digits_test):
    config = ServeConfig.from_dict({"port": 0, "batcher": {"max_batch_size": 8, "max_queue_delay_ms": 300},
                                    "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}]})
    server = Server(config).start()
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(call, server.url + "/v1/models/digits/predict", "POST",
                               {"inputs": digits_test.x[i:i + 1].tolist()}) for i in range(4)]
        deadline = time.monotonic() + 10
        while server.runtime.batchers["digits"].queue_depth() < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.stop()
        assert [f.result(timeout=30)[0] for f in pending] == [200] * 4


def test_npy_in_npy_out_matches_the_model_and_bad_npy_is_a_400(served, digits_test):
    model = load(served.config.models[0].path)
    x = digits_test.x[:3]
    for sent in (x, np.asfortranarray(x)):  # a Fortran-order body takes numpy's own reader
        status, headers, raw = call(served.url + "/v1/models/digits/predict", "POST", _npy(sent),
                                    ctype="application/x-npy", headers={"Accept": "application/x-npy"})
        assert status == 200 and headers["Content-Type"] == "application/x-npy"
        np.testing.assert_allclose(np.load(io.BytesIO(raw), allow_pickle=False), model.predict(x)["output"],
                                   rtol=1e-5, atol=1e-5)
    truncated = _npy(x)[:-7]
    status, _, raw = call(served.url + "/v1/models/digits/predict", "POST", truncated, ctype="application/x-npy")
    assert status == 400 and "not a .npy array" in json.loads(raw)["error"]
    pickled = _npy(np.array([{"a": 1}], dtype=object))
    status, _, raw = call(served.url + "/v1/models/digits/predict", "POST", pickled, ctype="application/x-npy")
    assert status == 400
