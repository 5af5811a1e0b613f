"""Bundles from a web server: real nginx (range requests, a rate limit, stopped mid-download) and Python's
http.server (no ranges), through the boards' own downloader; then a fleet push by URL to `edgec serve` boards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from helpers.boards import Board, padded
from helpers.broker import Mosquitto
from helpers.webserver import Nginx, PlainHttp

from edgec.errors import ValidationError
from edgec.runtime.agent.admission import bundle_version
from edgec.runtime.agent.delivery import Download, describe_blob
from edgec.runtime.bundle.archive import pack
from edgec.runtime.agent.urlsource import UrlSource, url_problem
from edgec.runtime.fleet_config import FleetConfig

CHUNK = 64 * 1024
EDGEC = Path(sys.executable).parent / "edgec"


@pytest.fixture
def served(tmp_path, fixture_bundle):
    """A 1.5 MB bundle packed as www/<sha256>.tar, with its Blob and the bundle folder."""
    bundle = padded(fixture_bundle("onnx", "int8"), tmp_path / "big", mb=1.5)
    archive = tmp_path / "bundle.tar"
    pack(bundle, archive)
    blob = describe_blob(archive, CHUNK)
    www = tmp_path / "www"
    www.mkdir()
    shutil.copyfile(archive, www / f"{blob.sha256}.tar")
    return www, blob, bundle


def _fetch(blob, url: str, folder: Path) -> tuple[Download, UrlSource, threading.Event]:
    download = Download(folder, blob)
    arrived = threading.Event()
    source = UrlSource(url, download, threading.Lock(), arrived.set, timeout_s=5).start()
    return download, source, arrived


def _until(predicate, timeout_s: float) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and not predicate():
        time.sleep(0.05)
    return predicate()


def test_a_download_resumes_with_a_range_request_after_nginx_went_away_mid_way(tmp_path, served):
    www, blob, bundle = served
    server = Nginx(tmp_path / "nginx", www, rate="256k").start()  # ~6 s for the bundle: caught mid-way
    port = server.port
    download, source, _ = _fetch(blob, server.url + f"{blob.sha256}.tar", tmp_path / "downloads")
    try:
        assert _until(lambda: download.done >= 4, 20), "nothing arrived from nginx"
        server.stop()
        assert _until(lambda: source.error is not None, 20), "the outage was not noticed"
        held = download.done
        assert 4 <= held < len(blob.chunks) and not download.complete and source.failed is None
        time.sleep(1.5)  # retried against a server that is not there
        server = Nginx(tmp_path / "nginx", www, port=port).start()
        assert _until(lambda: download.complete, 60), source.error
    finally:
        source.stop()
        server.stop()
    assert source.failed is None and source.error is None
    unpacked = download.finish(tmp_path / "unpacked")
    assert bundle_version(unpacked) == bundle_version(bundle)
    assert (unpacked / "padding.bin").read_bytes() == (bundle / "padding.bin").read_bytes()
    # (nginx logs a request when it ends: the one cut off by the stop is not in the log)
    ranges = [(status, rng) for _, status, rng, _ in server.requests()]
    assert ranges == [("206", f"bytes={held * CHUNK}-")], ranges


def test_a_server_without_ranges_sends_the_whole_file_and_the_chunks_held_are_not_written_again(tmp_path, served):
    www, blob, _ = served
    data = (www / f"{blob.sha256}.tar").read_bytes()
    held = Download(tmp_path / "downloads", blob)
    for i in range(3):
        assert held.accept(i, data[i * CHUNK:(i + 1) * CHUNK])
    held.close()
    server = PlainHttp(www).start()
    download, source, _ = _fetch(blob, server.url + f"{blob.sha256}.tar", tmp_path / "downloads")
    try:
        assert download.resumed_from == 3
        assert _until(lambda: download.complete, 30), source.error
    finally:
        source.stop()
        server.stop()
    assert download.received_bytes == blob.size - 3 * CHUNK
    download.finish(tmp_path / "unpacked")


def test_a_wrong_file_a_missing_one_and_a_redirect_each_fail_once_with_the_reason(tmp_path, served):
    www, blob, _ = served
    (www / "other.tar").write_bytes(b"\0" * blob.size)
    (www / "folder").mkdir()
    server = PlainHttp(www).start()
    try:
        for path, reason in [("other.tar", "chunk 0's sha256 differs"), ("missing.tar", "HTTP 404"),
                             ("folder", "HTTP 301 (a redirect: boards do not follow them")]:
            download, source, _ = _fetch(blob, server.url + path, tmp_path / path)
            assert _until(lambda: source.failed is not None, 20), path
            assert reason in source.failed and download.done == 0
            source.stop()
            download.close()
    finally:
        server.stop()


@pytest.mark.parametrize("url, prefixes, signed, problem", [
    ("https://cdn.example.com/edgec/a.tar", (), True, None),
    ("https://cdn.example.com/edgec/a.tar", ("https://cdn.example.com/edgec/",), False, None),
    ("https://cdn.example.com/edgec/a.tar", (), False, "fetches bundles only from URLs under [fleet] blob_urls"),
    ("https://cdn.example.com.evil.org/edgec/a.tar", ("https://cdn.example.com/",), True, "not under this board"),
    ("file:///etc/shadow", (), True, "not an http(s) URL"),
    ("http://user:pw@host/a.tar", (), True, "no user:password@"),
    ("http://host/a b.tar", (), True, "spaces or control characters"),
    ("http://host/" + "a" * 3000, (), True, "at most 2048 characters"),
    (["http://host/a.tar"], (), True, "must be a string"),
])
def test_a_bundle_url_from_the_broker_is_checked_before_anything_is_fetched(url, prefixes, signed, problem):
    found = url_problem(url, prefixes, signed)
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize("prefix", ["https://cdn.example.com", "ftp://host/", "https://user@host/x/", 3])
def test_blob_url_prefixes_must_end_a_path(prefix):
    with pytest.raises(ValidationError, match="blob_urls"):
        FleetConfig.from_dict({"blob_urls": [prefix]})
    assert FleetConfig.from_dict({"blob_urls": ["https://cdn.example.com/edgec/"]}).blob_urls == (
        "https://cdn.example.com/edgec/",)


def test_a_push_whose_url_does_not_serve_the_bundle_fails_before_any_board_is_told(tmp_path, served):
    _, _, bundle = served
    broker = Mosquitto(tmp_path / "broker").start()
    elsewhere = PlainHttp(tmp_path).start()  # serves a folder, but not the one the push writes to
    (tmp_path / "out").mkdir()
    common = ["fleet", "push", str(bundle), "--model", "digits", "--to", "all", "--allow-empty", "--broker",
              f"mqtt://127.0.0.1:{broker.port}", "--fleet", "test", "--timeout", "5"]
    try:
        alone = subprocess.run([str(EDGEC), *common, "--blob-dir", str(tmp_path / "served")], capture_output=True,
                               text=True, timeout=60)
        wrong = subprocess.run([str(EDGEC), *common, "--blob-dir", str(tmp_path / "out" / "blobs"), "--blob-url",
                                elsewhere.url + "blobs/"], capture_output=True, text=True, timeout=120)
        scheme = subprocess.run([str(EDGEC), *common, "--blob-dir", str(tmp_path / "never"), "--blob-url",
                                 "ftp://127.0.0.1/blobs/"], capture_output=True, text=True, timeout=60)
        desired = _retained(broker.port, "edgec/test/desired/#")
    finally:
        elsewhere.stop()
        broker.stop()
    assert alone.returncode == 1 and "--blob-dir and --blob-url go together" in alone.stderr
    assert wrong.returncode == 1 and "boards could not fetch the bundle from http://127.0.0.1" in wrong.stderr
    assert "HTTP 404" in wrong.stderr and "Traceback" not in wrong.stderr
    assert desired == []
    assert scheme.returncode == 1 and "not an http(s) URL" in scheme.stderr and not (tmp_path / "never").exists()


def _retained(port: int, pattern: str) -> list[str]:
    """The topics of the retained messages matching ``pattern`` on the broker."""
    topics: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, u, f, r, p: c.subscribe(pattern, qos=1)
    client.on_message = lambda c, u, m: topics.append(m.topic) if m.payload else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(1.5)
    client.loop_stop()
    client.disconnect()
    return topics


@pytest.mark.slow
def test_a_push_by_url_reaches_every_board_through_an_outage_and_the_broker_carries_no_bundle_bytes(
        tmp_path, served, fixture_bundle):
    www, blob, bundle = served
    broker = Mosquitto(tmp_path / "broker").start()
    server = Nginx(tmp_path / "nginx", tmp_path / "served", rate="128k")
    (tmp_path / "served").mkdir()
    server.start()
    # Unsigned test boards fetch bundles only from under their blob_urls.
    boards = [Board(tmp_path, f"pi-{i}", broker, fixture_bundle("onnx", "fp32"),
                    fleet_table=f'blob_urls = ["{server.url}"]\n').start() for i in (1, 2)]
    try:
        push = subprocess.Popen(
            [str(EDGEC), "fleet", "push", str(bundle), "--model", "digits", "--to", "group:lab",
             "--blob-dir", str(tmp_path / "served"), "--blob-url", server.url, "--broker",
             f"mqtt://127.0.0.1:{broker.port}", "--fleet", "test", "--timeout", "180", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def board_marks() -> list[int]:
            return [json.loads(p.read_text())["done"] for b in boards
                    for p in (b.root / "store" / ".downloads").glob("*.json")]

        assert _until(lambda: any(m >= 3 for m in board_marks()), 120), "no board began downloading"
        server.stop()  # the web server goes away mid-download
        time.sleep(2)
        server = Nginx(tmp_path / "nginx", tmp_path / "served", port=server.port, rate="0").start()
        out, err = push.communicate(timeout=240)
        assert push.returncode == 0, err + out
        result = json.loads(out)
        assert result["states"] == {"pi-1": "live", "pi-2": "live"}
        assert result["blob_bytes"] == blob.size
        assert all(b.version() == bundle_version(bundle) for b in boards)
        assert _retained(broker.port, "edgec/test/blobs/#") == []
        resumed = [rng for _, status, rng, _ in server.requests() if status == "206" and rng != "bytes=0-"]
        assert resumed, server.requests()
    finally:
        for board in boards:
            board.stop()
        server.stop()
        broker.stop()


@pytest.mark.parametrize("url", [3, ["http://host/a.tar"], {"u": 1}])
def test_a_blob_url_that_is_not_a_string_is_refused_before_anything_else(url):
    from edgec.errors import BundleError
    from edgec.runtime.agent.delivery import Blob

    chunk = "0" * 64
    with pytest.raises(BundleError, match="blob URL is not a string"):
        Blob.from_dict({"sha256": chunk, "size": 10, "chunk_size": 10, "chunks": [chunk], "url": url})
