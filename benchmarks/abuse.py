"""What hostile requests cost a running ``edgec serve``: its RSS and how fast ``/health`` answers meanwhile.

Run by hand: ``.venv/bin/python benchmarks/abuse.py``. The server is a real ``edgec serve``
process on loopback (the committed ONNX digits bundle, default limits); the script's own
threads play the attacker and a monitoring client that polls ``/health`` every 10 ms. Each
row is one attack:

- an ``.npz`` body of a few MB whose array inflates to 1 GiB;
- 20 connections each sending 600 kB of a declared 16 MB body, then stalling;
- 200 idle connections that send nothing;
- a 16 MB JSON body of real digits (what decoding it would build is counted before it is decoded);
- 200 slow clients that send their request head a byte at a time and reconnect when cut off,
  for 8 s, while the monitor keeps asking (the 503 column: how many of its requests were refused).

Columns: the server's RSS before and at its peak (sampled every 5 ms), the slowest and median
``/health`` answer during the attack, the polls refused with 503 (the connection cap taken)
and failed outright, and what the attacker got back.
"""

from __future__ import annotations

import argparse
import functools
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "tests" / "fixtures" / "bundles" / "onnx-fp32"
sys.path.insert(0, str(ROOT / "tests"))
from helpers.bombs import npz_bomb  # noqa: E402


class Watch:
    """Samples the server's RSS and times /health on threads until stopped."""

    def __init__(self, pid: int, url: str) -> None:
        self.proc, self.url = psutil.Process(pid), url
        self.rss: list[float] = []
        self.health_ms: list[float] = []
        self.failures = 0
        self.refused = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample), threading.Thread(target=self._poll)]

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        for t in self._threads:
            t.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss.append(self.proc.memory_info().rss / 2**20)
            time.sleep(0.005)

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=10) as resp:
                    resp.read()
                self.health_ms.append((time.perf_counter() - started) * 1000)
            except urllib.error.HTTPError as err:  # 503 while max_connections are taken
                self.refused += 1
                err.read()
            except OSError:
                self.failures += 1
            time.sleep(0.01)


def bomb(url: str, address: tuple[str, int]) -> str:
    body = npz_bomb(2**30)
    req = urllib.request.Request(url + "/v1/models/digits/predict", data=body, method="POST",
                                 headers={"Content-Type": "application/x-npz"})
    try:
        urllib.request.urlopen(req, timeout=60)
        return "200 (accepted!)"
    except urllib.error.HTTPError as err:
        return f"{err.code} ({len(body) / 2**20:.1f} MB body)"


def partial_bodies(url: str, address: tuple[str, int]) -> str:
    head = (b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            b"Content-Length: 16000000\r\n\r\n")
    socks = []
    for _ in range(20):
        sock = socket.create_connection(address)
        try:
            sock.sendall(head + bytes(600_000))
        except OSError:
            pass
        socks.append(sock)
    time.sleep(2.0)
    answers = []
    for sock in socks:
        sock.settimeout(0.5)
        try:
            answers.append(sock.recv(12)[9:12].decode() or "closed")
        except OSError:
            answers.append("waiting")
        sock.close()
    return ", ".join(f"{answers.count(a)}x {a}" for a in sorted(set(answers)))


def idle_connections(url: str, address: tuple[str, int]) -> str:
    socks = []
    for _ in range(200):
        try:
            socks.append(socket.create_connection(address, timeout=2))
        except OSError:
            break
    time.sleep(2.0)
    for sock in socks:
        sock.close()
    return f"{len(socks)} opened"


def digits_json() -> bytes:
    """Real digits as a JSON body just under the 16 MB request limit (full-precision floats, as clients send them)."""
    import json

    import numpy as np
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16).astype(np.float32).reshape(-1, 1, 8, 8)
    n, body = len(x) * 7, b""
    while not 15 * 2**20 < len(body) < 16 * 2**20:  # as close under the 16 MB request limit as it gets
        n = int(n * 15.5 * 2**20 / len(body)) if body else n
        rows = np.resize(x, (n, 1, 8, 8)) + np.float32(1e-7)  # full-precision floats, as clients send them
        body = json.dumps({"inputs": rows.tolist()}).encode()
    return body


def json_body(url: str, address: tuple[str, int], body: bytes = b"") -> str:
    req = urllib.request.Request(url + "/v1/models/digits/predict", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return f"{resp.status} ({len(body) / 2**20:.1f} MB body)"
    except urllib.error.HTTPError as err:
        return f"{err.code} ({len(body) / 2**20:.1f} MB body)"


def slow_clients(url: str, address: tuple[str, int], n: int = 200, seconds: float = 8.0) -> str:
    socks: list[socket.socket] = []
    opened, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        while len(socks) < n:
            try:
                sock = socket.create_connection(address, timeout=1)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                break
            socks.append(sock)
            opened += 1
        for sock in list(socks):  # a byte of a header that never ends; closed ones reconnect
            try:
                sock.sendall(b"X")
                sock.setblocking(False)
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                socks.remove(sock)
            finally:
                if sock in socks:
                    sock.setblocking(True)
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    return f"{opened} connections opened"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "runtime.toml"
        config.write_text(f'port = 8391\n[[models]]\nname = "digits"\npath = "{BUNDLE}"\n')
        server = subprocess.Popen([sys.executable, "-m", "edgec", "serve", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url, address = "http://127.0.0.1:8391", ("127.0.0.1", 8391)
        try:
            for _ in range(300):
                try:
                    with urllib.request.urlopen(url + "/ready", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            rows = []
            for name, attack in [("npz bomb, 1 GiB inflated", bomb), ("20 stalled 16 MB bodies", partial_bodies),
                                 ("200 idle connections", idle_connections), ("16 MB JSON body", functools.partial(json_body, body=digits_json())),
                                 ("200 slow clients reconnect", slow_clients)]:
                with Watch(server.pid, url) as watch:
                    before = watch.rss[0]
                    outcome = attack(url, address)
                rows.append((name, before, max(watch.rss), max(watch.health_ms), statistics.median(watch.health_ms),
                             f"{watch.refused}/{watch.failures} of {watch.refused + watch.failures + len(watch.health_ms)}",
                             outcome))
        finally:
            server.terminate()
            server.wait(30)
    print(f"\n{'attack':28} {'RSS before':>10} {'RSS peak':>9} {'+MB':>6} {'/health max':>11} {'median':>7} "
          f"{'503/failed of asked':>19}  attacker got")
    for name, before, peak, worst, median, failed, outcome in rows:
        print(f"{name:28} {before:9.1f}M {peak:8.1f}M {peak - before:6.1f} {worst:9.1f}ms {median:5.1f}ms "
              f"{failed:>19}  {outcome}")


if __name__ == "__main__":
    main()
