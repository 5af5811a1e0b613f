"""`edgec convert --measure-on`: the precision search times its candidates on a board and ships by the board's numbers.

A real `edgec serve` board on loopback checks the whole path. A scripted board (an HTTP server answering
`/v1/measure` with timings chosen here) then shows that the choice follows the board and not this host, and
that a board's bad answers stop the conversion with one line and no bundle.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers.boards import Board
from helpers.broker import free_port

from edgec.runtime.system import host_arch

EDGEC = Path(sys.executable).parent / "edgec"
TOKEN = "measure-admin-token-0123456789"


@pytest.fixture
def calib(tmp_path, digits_test):
    path = tmp_path / "calib.npz"
    np.savez(path, input=digits_test.x, labels=digits_test.y)
    return path


def convert(source: Path, calib: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGEC), "convert", str(source), "--device", "x86", "--calib", str(calib), "--out",
                           str(out), "--json", *extra], capture_output=True, text=True, timeout=600)


def test_candidates_are_timed_on_a_real_board_and_the_report_says_which(tmp_path, fixture_bundle, calib):
    pytest.importorskip("onnx")
    board = Board(tmp_path, "pi", None, fixture_bundle("onnx", "fp32"),
                  top=f'admin_token = "{TOKEN}"\n[measure]\nenabled = true\n').start()
    try:
        serving = board.version()
        done = convert(fixture_bundle("onnx", "fp32") / "model.onnx", calib, tmp_path / "out",
                       "--measure-on", board.url, "--token", TOKEN)
        assert done.returncode == 0, done.stderr[-3000:]
        assert board.version() == serving  # the board kept serving its own model throughout
    finally:
        board.stop()
    report = json.loads(done.stdout)
    measured = report["board"]
    assert measured["url"] == board.url and measured["board"]["arch"] == host_arch() and measured["batch"] == 8
    assert "onnxruntime" in measured["board"]["versions"]
    search = report["search"]
    assert search["speed_rule"].startswith(f"timed on the board at {board.url}")
    timed = [c for c in search["candidates"] if c.get("board")]
    shipped = next(c for c in search["candidates"] if c["status"] == "shipped")
    # every candidate within the accuracy budget was timed there, and its speed-up is the board's
    assert shipped in timed and measured["fp32"]["p50_ms"] > 0  # (fp32 itself: the reference, timed first)
    assert all(c in timed for c in search["candidates"] if c["status"] in ("within budget", "slower", "too large"))
    for c in timed:
        if c["precision"] != "fp32":
            assert c["speedup_vs_fp32"] == c["board"]["speedup"] > 0  # timed against fp32 in alternating rounds
        assert "give the host's answers" in c["board"]["parity"] and c["board"]["added_rss_bytes"] > 0
    assert measured["shipped"] == shipped["board"]
    page = (tmp_path / "out" / "report.md").read_text()
    assert "## Measured on the board" in page and board.url in page


class ScriptedBoard:
    """An HTTP server answering `/v1/measure` as a board would, with batch-1 p50 chosen per precision."""

    def __init__(self, p50_by_precision: dict[str, float], *, answer: bytes | None = None, status: int = 200) -> None:
        self.p50, self.answer, self.status, self.seen = p50_by_precision, answer, status, []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply(200, json.dumps({"board": BOARD, "max_mb": 256, "busy": False}).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                    paired = "candidate.tar" in tar.getnames()  # with the fp32 reference beside it
                    if paired:
                        body = tar.extractfile("candidate.tar").read()
                with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                    manifest = json.load(tar.extractfile("manifest.json"))
                scripted.seen.append((manifest["precision"], paired))
                if scripted.answer is not None:
                    return self._reply(scripted.status, scripted.answer)
                p50 = scripted.p50[manifest["precision"]]
                self._reply(200, json.dumps(timing(p50, scripted.p50["fp32"] if paired else None)).encode())

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


BOARD = {"board": "Raspberry Pi 4 Model B Rev 1.4", "cpu": "ARM Cortex-A72", "arch": "aarch64", "cores": 4,
         "memory_bytes": 4 << 30, "system": "Linux 6.6.31+rpt-rpi-v8", "versions": {"onnxruntime": "1.20.1"}}


def timing(p50: float, reference_p50: float | None = None) -> dict:
    one = {"p50_ms": p50, "p90_ms": p50 * 1.2, "runs": 200, "threads": 4}
    paired = None if reference_p50 is None else {"speedup": reference_p50 / p50, "reference_p50_ms": reference_p50,
                                                 "p50_ms": p50, "runs": 300}
    return {"board": BOARD, "parity": "8 golden sample(s) give the host's answers", "load_ms": 20.0,
            "peak_rss_bytes": 90 << 20, "added_rss_bytes": 20 << 20, "paired": paired,
            "timing": {"batch1": one, "batch": {**one, "p50_ms": 4 * p50}, "batch_size": 8, "note": None}}


@pytest.mark.parametrize("p50, ships", [
    ({"fp32": 1.0, "int8": 0.25, "fp16": 0.9}, "int8 static minmax"),  # int8 4x faster there: it ships
    ({"fp32": 1.0, "int8": 2.0, "fp16": 2.0}, "fp32"),  # slower there: neither int8 nor fp16 ships
])
def test_the_choice_follows_the_boards_numbers(tmp_path, fixture_bundle, calib, p50, ships):
    pytest.importorskip("onnx")
    board = ScriptedBoard(p50)
    try:
        done = convert(fixture_bundle("onnx", "fp32") / "model.onnx", calib, tmp_path / "out",
                       "--measure-on", board.url, "--token", TOKEN)
    finally:
        board.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    shipped = next(c for c in report["search"]["candidates"] if c["status"] == "shipped")
    assert shipped["label"] == ships and report["target"]["precision"] == ships.split()[0]
    assert shipped["speedup_vs_fp32"] == pytest.approx(p50["fp32"] / p50[shipped["precision"]])
    assert report["board"]["board"]["cpu"] == "ARM Cortex-A72"
    assert "is aarch64, but x86-64 is x86_64" in done.stderr  # a board of another kind than the profile: said
    # fp32 alone first, then each candidate within budget with fp32 beside it, to be timed against it there
    assert board.seen[0] == ("fp32", False) and all(paired for _, paired in board.seen[1:]) and len(board.seen) >= 2


@pytest.mark.parametrize("answer, status, why", [
    (json.dumps(timing(float("nan"))).encode(), 200, "bad p50"),
    (b"<html>a captive portal</html>", 200, "did not answer a json object"),
    (b"{" + b" " * (2 << 20) + b"}", 200, "more than"),
    (json.dumps({"error": "admin routes need the header Authorization: Bearer <admin_token>"}).encode(), 401,
     "answered 401"),
])
def test_a_bad_answer_from_the_board_stops_the_conversion(tmp_path, fixture_bundle, calib, answer, status, why):
    pytest.importorskip("onnx")
    board = ScriptedBoard({}, answer=answer, status=status)
    try:
        done = convert(fixture_bundle("onnx", "fp32") / "model.onnx", calib, tmp_path / "out",
                       "--measure-on", board.url, "--token", TOKEN)
    finally:
        board.stop()
    assert done.returncode == 1 and why in done.stderr.lower(), done.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("extra, why", [
    (["--measure-on", "http://127.0.0.1:{port}", "--token", TOKEN], "cannot reach the board"),
    (["--measure-on", "http://127.0.0.1:{port}"], "needs the board's admin_token"),
    (["--measure-on", "pi-lab:8080", "--token", TOKEN], "must be the board's address"),
])
def test_a_board_that_cannot_measure_fails_at_once(tmp_path, fixture_bundle, calib, extra, why):
    port = free_port()  # nothing listens there
    done = convert(fixture_bundle("onnx", "fp32") / "model.onnx", calib, tmp_path / "out",
                   *(e.format(port=port) for e in extra))
    assert done.returncode == 1 and why in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) <= 4 and not (tmp_path / "out").exists()


def test_an_explicit_precision_is_measured_on_the_board_for_the_report(tmp_path, fixture_bundle, calib):
    """No search to choose: the board still times fp32 and the int8 asked for, and the report has its numbers."""
    pytest.importorskip("onnx")
    board = ScriptedBoard({"fp32": 1.0, "int8": 0.5})
    try:
        done = convert(fixture_bundle("onnx", "fp32") / "model.onnx", calib, tmp_path / "out", "--precision", "int8",
                       "--measure-on", board.url, "--token", TOKEN)
    finally:
        board.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["search"] is None and report["board"]["speedup_vs_fp32"] == pytest.approx(2.0)
    assert board.seen == [("fp32", False), ("int8", True)]
    page = (tmp_path / "out" / "report.md").read_text()
    assert "On the board (Raspberry Pi 4 Model B Rev 1.4 (ARM Cortex-A72, aarch64, 4 cores)): 2.00x the fp32" in page
