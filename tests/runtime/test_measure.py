"""`POST /v1/measure` on a real `edgec serve`: a candidate is checked and timed in a child process, refused with
its reason when it is hostile or wrong, and never touches what the board serves."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.boards import Board, drifted

from edgec.runtime.bundle.archive import pack
from edgec.runtime.system import host_arch

TOKEN = "measure-admin-token-0123456789"
ON = f'admin_token = "{TOKEN}"\n[measure]\nenabled = true\nmax_mb = 4\n'


def ask(board: Board, body: bytes | None = None, query: str = "", token: str | None = TOKEN,
        timeout: float = 120) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{board.url}/v1/measure{query}", data=body, headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def packed(bundle: Path, tmp: Path) -> bytes:
    pack(bundle, tmp / f"{bundle.name}.tar")
    return (tmp / f"{bundle.name}.tar").read_bytes()


def served(board: Board, x: np.ndarray) -> tuple[str, list]:
    request = urllib.request.Request(f"{board.url}/v1/models/digits/predict", data=json.dumps({"inputs": x.tolist()})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return board.version(), json.loads(resp.read())["outputs"]["output"]


@pytest.fixture
def board(tmp_path, fixture_bundle):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    started = Board(tmp_path, "pi", None, fixture_bundle("onnx", "fp32"), top=ON, env={"TMPDIR": str(scratch)}).start()
    yield started
    started.stop()


def test_measuring_needs_the_token_and_the_switch(tmp_path, fixture_bundle, board):
    off = Board(tmp_path, "field", None, fixture_bundle("onnx", "fp32"), top=f'admin_token = "{TOKEN}"\n').start()
    none = Board(tmp_path, "plain", None, fixture_bundle("onnx", "fp32")).start()
    try:
        body = packed(fixture_bundle("onnx", "int8"), tmp_path)
        assert ask(none, body)[0] == 403  # no admin token configured: admin routes are off
        status, answer = ask(off, body)
        assert status == 409 and "[measure] enabled = true" in answer["error"]
        assert ask(board, body, token=None)[0] == 401
        assert ask(board, body, token="not-the-token-0123456789")[0] == 401
        status, answer = ask(board)  # GET: who the board is, before any upload
        assert status == 200 and answer["board"]["arch"] == host_arch() and answer["max_mb"] == 4
    finally:
        off.stop()
        none.stop()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_candidate_is_checked_and_timed_in_a_child_and_never_served(tmp_path, fixture_bundle, digits_test, board,
                                                                      fmt):
    before = served(board, digits_test.x[:5])
    status, answer = ask(board, packed(fixture_bundle(fmt, "int8"), tmp_path), "?batch=4&budget_s=0.2")
    assert status == 200, answer
    assert answer["format"] == fmt and answer["precision"] == "int8"
    assert "give the host's answers" in answer["parity"]  # the golden check ran on this board's kernels
    one, timing = answer["timing"]["batch1"], answer["timing"]
    assert 0 < one["p50_ms"] <= one["p90_ms"] and one["runs"] >= 30
    if fmt == "onnx":  # the ONNX digits take any batch; the TFLite one is fixed to batch 1, and says so
        assert timing["batch_size"] == 4 and timing["batch"]["p50_ms"] > 0 and timing["note"] is None
    else:
        assert timing["batch"] is None and "batch 1 only" in timing["note"]
    assert answer["peak_rss_bytes"] > answer["added_rss_bytes"] > 0 and answer["load_ms"] > 0
    assert answer["board"]["arch"] == host_arch() and answer["board"]["cores"] >= 1
    assert answer["board"]["versions"]["edgec"]
    # what the board serves is untouched, and the candidate left nothing behind
    assert served(board, digits_test.x[:5]) == before
    assert not list((board.root.parent / "tmp").glob("edgec-measure-*"))


def test_a_candidate_sent_with_its_reference_is_timed_against_it_in_alternating_rounds(tmp_path, fixture_bundle,
                                                                                       board):
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "candidate.tar").write_bytes(packed(fixture_bundle("onnx", "int8"), tmp_path))
    (upload / "reference.tar").write_bytes(packed(fixture_bundle("onnx", "fp32"), tmp_path))
    status, answer = ask(board, packed(upload, tmp_path), "?budget_s=0.2")
    assert status == 200, answer
    paired = answer["paired"]
    assert answer["precision"] == "int8" and paired["speedup"] > 0 and paired["runs"] >= 21
    assert paired["speedup"] == pytest.approx(paired["reference_p50_ms"] / paired["p50_ms"], rel=0.5)
    assert ask(board, packed(fixture_bundle("onnx", "int8"), tmp_path))[1]["paired"] is None  # alone: nothing to pair


def test_hostile_or_wrong_candidates_are_refused_with_their_reason(tmp_path, fixture_bundle, crashing_bundle,
                                                                    digits_test, board):
    before = served(board, digits_test.x[:3])

    def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:") as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buffer.getvalue()

    link = tarfile.TarInfo("model.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    climbing = tarfile.TarInfo("../../escaped.txt")
    climbing.size = 3
    cases = {
        "not a plain file": tar_of((link, None)),
        "not a plain file ": tar_of((climbing, b"abc")),
        "cannot be read": b"this is not a tar archive" * 40,
        "holds neither a bundle": tar_of((_info("notes.txt", 2), b"hi")),
        "holds neither a bundle ": tar_of((_info("candidate.tar", 3), b"abc"), (_info("extra.sh", 2), b"rm")),
        "not a plain file  ": tar_of((_info("candidate.tar", len(packed(fixture_bundle("onnx", "int8"), tmp_path))),
                                      packed(fixture_bundle("onnx", "int8"), tmp_path)),
                                     (_info("reference.tar", len(tar_of((link, None)))), tar_of((link, None)))),
        "answers differ": packed(drifted(fixture_bundle("onnx", "int8"), tmp_path / "drifted"), tmp_path),
        "crashed its backend": packed(crashing_bundle, tmp_path),
    }
    for why, body in cases.items():
        status, answer = ask(board, body)
        assert status == 422 and why.strip() in answer["error"], (why, answer)
    assert not (board.root.parent / "escaped.txt").exists() and not Path("/tmp/escaped.txt").exists()
    status, answer = ask(board, bytes(5 * 2**20))
    assert status == 413  # over [measure] max_mb, refused while it arrives
    for query in ("?batch=0", "?batch=eight", "?budget_s=100", "?threads=64"):
        assert ask(board, packed(fixture_bundle("onnx", "int8"), tmp_path), query)[0] == 400, query
    assert served(board, digits_test.x[:3]) == before  # the board went on serving, unchanged
    assert not list((board.root.parent / "tmp").glob("edgec-measure-*"))


def test_a_candidate_past_the_memory_cap_is_stopped(tmp_path, fixture_bundle):
    capped = Board(tmp_path, "small", None, fixture_bundle("onnx", "fp32"), top=ON + "max_rss_mb = 1\n").start()
    try:
        status, answer = ask(capped, packed(fixture_bundle("onnx", "int8"), tmp_path))
        assert status == 422 and "more than 1 MB of memory" in answer["error"]
        assert capped.predict(np.zeros((1, 1, 8, 8), np.float32)) == 200
    finally:
        capped.stop()


def test_one_candidate_at_a_time(tmp_path, fixture_bundle, board):
    body = packed(fixture_bundle("onnx", "int8"), tmp_path)
    first: list = []
    slow = threading.Thread(target=lambda: first.append(ask(board, body, "?batch=256&budget_s=3")))
    slow.start()
    deadline = time.monotonic() + 30
    while not ask(board)[1].get("busy") and time.monotonic() < deadline:  # (GET says whether one is underway)
        time.sleep(0.02)
    status, answer = ask(board, body, "?budget_s=0.05")
    slow.join()
    assert status == 429 and "measuring another candidate" in answer["error"]
    assert first[0][0] == 200 and not ask(board)[1]["busy"]


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def test_the_board_names_its_cpu_from_cpuinfo():
    from edgec.runtime.system import cpu_model

    pi4 = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nprocessor\t: 1\n"
    assert cpu_model(pi4) == "ARM Cortex-A72"
    assert cpu_model("processor\t: 0\nmodel name\t: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz\n") \
        == "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz"
    assert cpu_model("processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x801\nHardware\t: Qualcomm\n") \
        == "Qualcomm"  # a core not in the table: the SoC's name, where the kernel gives one
    assert cpu_model("") is None


@pytest.mark.parametrize("table, message", [
    ({"measure": {"enabled": 1}}, "[measure] enabled must be true or false"),
    ({"measure": {"max_mb": -1}}, "[measure] max_mb must be a number above 0"),
    ({"measure": {"timeout_s": "soon"}}, "[measure] timeout_s must be seconds above 0"),
    ({"measure": {"max_rss": 10}}, "unknown [measure] key(s): max_rss"),
    ({"grpc": {"port": 70000}}, "[grpc] port must be a port from 0 to 65535"),
    ({"grpc": {"max_message_mb": 0}}, "[grpc] max_message_mb must be a number of MB above 0"),
    ({"grpc": {"max_concurrent_rpcs": 0}}, "[grpc] max_concurrent_rpcs must be a whole number from 1 to 65536"),
])
def test_bad_measure_and_grpc_settings_name_the_key(table, message):
    from edgec.errors import ValidationError
    from edgec.runtime.config import ServeConfig

    with pytest.raises(ValidationError) as exc:
        ServeConfig.from_dict(table)
    assert message in str(exc.value)
