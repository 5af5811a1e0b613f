"""Clients that misbehave on purpose, over real sockets: slow heads and bodies, idle connections, too many."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server
from edgec.errors import ValidationError
from helpers.bombs import npz_bomb  # noqa: E402


@pytest.fixture
def strict(fixture_bundle):
    config = ServeConfig.from_dict({
        "port": 0, "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}],
        "http": {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "idle_timeout_s": 0.5, "max_connections": 3}})
    server = Server(config).start()
    yield server
    server.stop()


def _read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def test_a_connection_that_sends_nothing_is_closed(strict):
    with socket.create_connection(strict.address) as sock:
        answer, took = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request head" in answer and took < 3


def test_a_head_sent_a_byte_at_a_time_is_cut_off(strict):
    started = time.monotonic()
    with socket.create_connection(strict.address) as sock:
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # 31 bytes over ~3 s
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
            answer = _read_until_closed(sock)[0]
        except (BrokenPipeError, ConnectionResetError):
            answer = b"(closed while sending)"
    assert time.monotonic() - started < 2.5  # cut off long before the head was complete
    assert answer.startswith((b"HTTP/1.1 408 ", b"(closed while sending)"))


def test_a_body_that_never_arrives_is_cut_off(strict):
    with socket.create_connection(strict.address) as sock:
        sock.sendall(b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\": [")
        answer, took = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body" in answer and took < 3


def test_an_idle_keep_alive_connection_is_closed(strict):
    with socket.create_connection(strict.address) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, took = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and 0.3 < took < 3  # answered, then closed when idle


def test_past_max_connections_requests_get_503_and_the_rest_serve(strict):
    """Three connections each in the middle of a request (its body still arriving) fill the server: a fourth
    gets 503. (Connections that have sent nothing give way to a new one instead, see docs/serve.md.)"""
    from edgec.runtime.serve.http import BODY

    held: list[socket.socket] = []
    connections = strict.http._server.server_state.connections
    try:
        for _ in range(3):  # each one's head is taken before the next connects: a full server closes a silent one
            held.append(socket.create_connection(strict.address))
            held[-1].sendall(b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                             b"\r\nContent-Length: 100\r\n\r\n{")
            deadline = time.monotonic() + 5
            while sum(c._phase == BODY for c in list(connections)) < len(held):
                assert time.monotonic() < deadline, "the server did not take the request"
                time.sleep(0.002)
        with socket.create_connection(strict.address) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer, _ = _read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with socket.create_connection(strict.address) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(sock)[0].startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("table", [{"max_connections": 0}, {"header_timeout_s": -1}, {"idle_timeout_s": "soon"},
                                   {"max_header": 1}])
def test_bad_http_limits_are_refused_with_the_key(table):
    with pytest.raises(ValidationError, match=next(iter(table))):
        ServeConfig.from_dict({"http": table})


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_npz_bomb_is_refused_from_its_headers_and_the_server_stays_responsive(strict):
    body = npz_bomb(2**30, level=1)  # ~4.7 MB that inflates to 1 GiB
    assert len(body) < 16 * 2**20
    peak, done = [_rss_mb()], threading.Event()
    before = peak[0]

    def watch():
        while not done.is_set():
            peak.append(_rss_mb())
            time.sleep(0.005)

    health = []

    def poll():
        while not done.is_set():
            with urllib.request.urlopen(strict.url + "/health", timeout=10) as resp:
                health.append(resp.status)

    threads = [threading.Thread(target=watch), threading.Thread(target=poll)]
    for t in threads:
        t.start()
    try:
        req = urllib.request.Request(strict.url + "/v1/models/digits/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/x-npz"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert refused.value.code == 400 and b"once decompressed" in refused.value.read()
    assert max(peak) - before < 100  # never inflated: the body and its copies only
    assert health and set(health) == {200}  # the loop kept answering while the body was handled


def test_request_bodies_held_at_once_are_bounded(fixture_bundle):
    config = ServeConfig.from_dict({"port": 0, "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}],
                                    "http": {"max_pending_mb": 1, "body_timeout_s": 2}})
    server = Server(config).start()
    partial = []
    try:
        head = (b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                b"Content-Length: 900000\r\n\r\n")
        for _ in range(2):  # two bodies of 0.9 MB, each sent up to 600 kB and then stalled
            sock = socket.create_connection(server.address)
            sock.sendall(head + bytes(600_000))
            partial.append(sock)
        refused, _ = _read_until_closed(partial[1])  # answered at once, closed when its body ends or stalls
        assert refused.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in refused.lower()
        stalled, took = _read_until_closed(partial[0])  # the first, when its body stalls past body_timeout_s
        assert stalled.startswith(b"HTTP/1.1 408 ") and took < 4
        with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
            assert resp.status == 200  # requests without bodies are still served
    finally:
        for sock in partial:
            sock.close()
        server.stop()


def test_what_a_json_body_decodes_to_counts_against_the_bodies_held(fixture_bundle, digits_test):
    """A JSON body builds Python lists and floats many times its size: that is counted before decoding."""
    import io
    import json

    import numpy as np

    config = ServeConfig.from_dict({"port": 0, "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}],
                                    "http": {"max_pending_mb": 8}})
    server = Server(config).start()

    def post(path: str, body: bytes, ctype: str = "application/json", **headers: str) -> tuple[int, bytes]:
        request = urllib.request.Request(server.url + path, data=body, method="POST",
                                         headers={"Content-Type": ctype, **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    try:
        x = np.repeat(digits_test.x[:16], 256, axis=0)  # 4,096 real digits: 1.7 MB as JSON, 13 MB decoded
        as_json = json.dumps({"inputs": x.tolist()}).encode()
        assert len(as_json) < 2**21
        status, body = post("/v1/models/digits/predict", as_json)
        assert status == 413 and b"max_pending_mb" in body and b"x-npy" in body, body
        oip = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                      "data": x.ravel().tolist()}]}).encode()
        status, body = post("/v2/models/digits/infer", oip)
        assert status == 413 and b"binary extension" in body, body
        npy = io.BytesIO()
        np.save(npy, x)
        status, body = post("/v1/models/digits/predict", npy.getvalue(), "application/x-npy", Accept="application/x-npy")
        assert status == 200  # the same tensors, binary: 4 bytes a number
        small = json.dumps({"inputs": x[:64].tolist()}).encode()  # 0.2 MB decoded: served
        status, body = post("/v1/models/digits/predict", small)
        assert status == 200 and len(json.loads(body)["outputs"]["output"]) == 64
    finally:
        server.stop()


def test_a_full_server_closes_its_slowest_connection_for_a_normal_client(fixture_bundle):
    config = ServeConfig.from_dict({"port": 0, "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))}],
                                    "http": {"max_connections": 10, "header_timeout_s": 30}})
    server = Server(config).start()
    slow = []
    try:
        for _ in range(10):  # every slot taken by a head that never ends
            sock = socket.create_connection(server.address)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
            time.sleep(0.02)
        for _ in range(5):  # normal clients get in: while 90% of the slots are taken, in the place of the oldest slow one
            with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
                assert resp.status == 200
        answers = []
        for sock in slow:
            sock.settimeout(0.5)
            try:
                answers.append(sock.recv(200))
            except OSError:
                answers.append(b"")
        closed = [a for a in answers if a.startswith(b"HTTP/1.1 408 ") and b"make room" in a]
        assert len(closed) >= 2 and answers[:len(closed)] == closed, answers  # the oldest went first
        assert all(a.startswith(b"HTTP/1.1 408 ") or a == b"" for a in answers)
    finally:
        for sock in slow:
            sock.close()
        server.stop()
