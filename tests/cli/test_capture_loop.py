"""Closing the loop from the field: a board keeps samples of what it served (most of all what it was unsure
of), `edgec fleet capture pull` brings them back with the admin token, and the next `edgec convert`
calibrates on them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.boards import Board
from helpers.broker import Mosquitto
from helpers.shifts import SHIFTS

EDGEC = Path(sys.executable).parent / "edgec"
TOKEN = "capture-admin-token-0123456789"


def test_samples_pulled_from_a_board_calibrate_the_next_bundle(tmp_path, fixture_bundle, digits_test):
    pytest.importorskip("onnx")
    broker = Mosquitto(tmp_path / "broker").start()
    source = fixture_bundle("onnx", "fp32")
    board = Board(tmp_path, "pi-1", broker, source,
                  top=f'admin_token = "{TOKEN}"\n[capture]\nenabled = true\nfolder = "kept"\nkeep_share = 1.0\n'
                      f'per_minute = 5000\n[drift]\ncpu_budget = 1.0\n').start()
    try:
        served = np.concatenate([digits_test.x, SHIFTS["rotate"](digits_test.x)])
        for i in range(0, len(served), 10):
            assert board.predict(served[i:i + 10]) == 200
        def held() -> int:  # what the board holds, by its own count
            with urllib.request.urlopen(f"{board.url}/v1/stats", timeout=10) as resp:
                return json.loads(resp.read())["capture"]["digits"]["samples"]

        kept = held()
        while True:  # the drift thread may still be binning the last batch it took: wait for a steady count
            time.sleep(0.5)
            if held() == kept:
                break
            kept = held()
        assert kept >= 30  # (batches the drift thread skips while busy are not sampled: not every one of 900)
        pull = [str(EDGEC), "fleet", "capture", "pull", "--board", board.url, "--model", "digits"]

        refused = subprocess.run([*pull, "--token", "not-the-token-0123456789", "--out", str(tmp_path / "no.npz")],
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "401" in refused.stderr and not (tmp_path / "no.npz").exists()

        field = tmp_path / "field.npz"
        got = subprocess.run([*pull, "--token", TOKEN, "--out", str(field)], capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        with np.load(field) as npz:
            x, reasons = npz["input"], npz["reason"]
        assert len(x) == len(reasons) == kept and x.shape[1:] == (1, 8, 8) and x.dtype == np.float32
        assert f"{len(x)} sample(s) of digits" in got.stdout and "low_confidence" in set(reasons)
        # every kept row is one the board was served
        assert all(any(np.array_equal(row, s) for s in served) for row in x[:20])
        assert (tmp_path / "pi-1" / "kept" / "digits").is_dir()  # on the board's disk, beside its runtime.toml

        def status(path: str, token: str | None = TOKEN) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                with urllib.request.urlopen(urllib.request.Request(board.url + path, headers=headers), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status("/v1/models/digits/capture", token=None) == 401
        assert status("/v1/models/nobody/capture") == 404  # only a model the board serves names a folder
        assert status("/v1/models/..%2F..%2Fetc/capture") == 404
        assert status("/v1/models/digits/../../capture") == 404
    finally:
        board.stop()
        broker.stop()

    out = tmp_path / "next"
    convert = subprocess.run([str(EDGEC), "convert", str(source / "model.onnx"), "--device", "x86", "--precision",
                              "int8", "--calib", str(field), "--out", str(out)], capture_output=True, text=True)
    assert convert.returncode == 0, convert.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert "field.npz" in json.dumps(report["data"])
    assert (out / "drift.json").is_file()  # the next bundle's reference comes from the field


@pytest.mark.parametrize("answer, max_mb, why", [
    (b"<html>not the samples</html>", 1, "not"),  # a proxy's page, not an .npz
    (None, 1, "pickle"),  # an .npz holding a pickled object: never unpickled
    (bytes(3 * 2**20), 1, "more than 1 mb"),  # larger than --max-mb: refused while reading
])
def test_a_hostile_answer_to_a_pull_is_refused_and_nothing_is_written(tmp_path, answer, max_mb, why):
    """What comes back is the network's: checked as a bounded .npz of plain arrays before anything is written."""
    import io

    from helpers.webserver import PlainHttp

    if answer is None:
        buffer = io.BytesIO()
        np.savez(buffer, input=np.array([{"a": 1}], dtype=object))
        answer = buffer.getvalue()
    route = tmp_path / "www" / "v1" / "models" / "digits" / "capture"
    route.parent.mkdir(parents=True)
    route.write_bytes(answer)
    server = PlainHttp(tmp_path / "www").start()
    try:
        out = tmp_path / "field.npz"
        done = subprocess.run([str(EDGEC), "fleet", "capture", "pull", "--board", server.url.rstrip("/"), "--model",
                               "digits", "--token", TOKEN, "--out", str(out), "--max-mb", str(max_mb)],
                              capture_output=True, text=True)
        assert done.returncode == 1 and why in done.stderr.lower(), done.stderr
        assert not out.exists() and not list(tmp_path.glob(".field.npz*"))
    finally:
        server.stop()
