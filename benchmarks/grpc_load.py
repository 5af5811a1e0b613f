"""HTTP (binary tensors) against gRPC on one ``edgec serve``, with Triton's own clients, and the memory gRPC adds.

Run by hand: ``.venv/bin/python benchmarks/grpc_load.py`` (``--clients``, ``--seconds``, ``--rounds``), or as
part of ``benchmarks/runtime.py``. The server is a real ``edgec serve`` process serving the committed digits
bundle (tests/fixtures) on both protocols. Clients are ``tritonclient.http`` (binary tensor data) and
``tritonclient.grpc`` (raw contents), one client per thread, spread over two processes, at batch 1 and at
batch 64 (a 16 kB tensor). The protocols run in alternating rounds; the table gives requests/s, the
server's CPU per request (its process's CPU time over the requests it answered) and failures. The memory
table gives the serving process's RSS with ``[grpc]`` off and on, after the same warm-up.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EDGEC = Path(sys.executable).parent / "edgec"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(work: Path, grpc: bool) -> tuple[subprocess.Popen, int, int]:
    http_port, grpc_port = free_port(), free_port()
    config = work / f"runtime-{'grpc' if grpc else 'http'}.toml"
    config.write_text(f'port = {http_port}\n[batcher]\nmax_batch_size = 16\n'
                      + (f"[grpc]\nport = {grpc_port}\n" if grpc else "")
                      + f'[[models]]\nname = "digits"\npath = "{FIXTURES / "bundles" / "onnx-fp32"}"\n')
    server = subprocess.Popen([str(EDGEC), "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", grpc_port if grpc else http_port), timeout=0.2).close()
            return server, http_port, grpc_port
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("edgec serve did not start")


def _client(protocol: str, port: int, threads: int, batch: int, seconds: float, out: multiprocessing.Queue) -> None:
    if protocol == "grpc":
        import tritonclient.grpc as client_lib
    else:
        import tritonclient.http as client_lib
    x = np.load(FIXTURES / "digits-test.npz")["x"][:batch].astype(np.float32)
    counts, failures = [0] * threads, [0] * threads

    def run(k: int) -> None:
        client = client_lib.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = client_lib.InferInput("input", list(x.shape), "FP32")
        if protocol == "grpc":
            tensor.set_data_from_numpy(x)
            wanted = [client_lib.InferRequestedOutput("output")]
        else:
            tensor.set_data_from_numpy(x, binary_data=True)
            wanted = [client_lib.InferRequestedOutput("output", binary_data=True)]
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            try:
                client.infer("digits", [tensor], outputs=wanted).as_numpy("output")
                counts[k] += 1
            except Exception:
                failures[k] += 1
        client.close()

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((sum(counts), sum(failures)))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 1/100 s


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096 / 2**20


def load(protocol: str, port: int, pid: int, clients: int, batch: int, seconds: float) -> tuple[float, float, int]:
    """Requests/s, server CPU ms per request and failures of ``clients`` clients for ``seconds``."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(protocol, port, clients // 2, batch, seconds, out)) for _ in range(2)]
    cpu0 = cpu_seconds(pid)
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    cpu = cpu_seconds(pid) - cpu0
    done, failed = sum(r[0] for r in results), sum(r[1] for r in results)
    return done / seconds, 1e3 * cpu / max(done, 1), failed


def compare(clients: int = 16, seconds: float = 5.0, rounds: int = 3) -> dict:
    """Both protocols on one server, alternating; and the server's RSS without and with gRPC."""
    with tempfile.TemporaryDirectory() as tmp:
        server, http_port, grpc_port = start(Path(tmp), grpc=True)
        rows = []
        try:
            load("http", http_port, server.pid, 2, 1, 1.0)  # a brief warm-up, the same for both servers
            with_grpc = rss_mb(server.pid)
            for batch in (1, 64):
                got: dict[str, list] = {"HTTP binary": [], "gRPC": []}
                for _ in range(rounds):
                    for protocol, port in (("HTTP binary", http_port), ("gRPC", grpc_port)):
                        got[protocol].append(load("grpc" if protocol == "gRPC" else "http", port, server.pid,
                                                  clients, batch, seconds))
                for protocol, runs in got.items():
                    rates, cpus = [r[0] for r in runs], [r[1] for r in runs]
                    rows.append({"protocol": protocol, "batch": batch, "requests_s": float(np.median(rates)),
                                 "min": min(rates), "max": max(rates), "server_cpu_ms": float(np.median(cpus)),
                                 "failures": sum(r[2] for r in runs)})
        finally:
            server.terminate()
            server.wait(30)
        plain, _, _ = start(Path(tmp), grpc=False)
        try:
            load("http", _http_port_of(Path(tmp)), plain.pid, 2, 1, 1.0)
            without = rss_mb(plain.pid)
        finally:
            plain.terminate()
            plain.wait(30)
    return {"rows": rows, "rss_mb": {"without gRPC": without, "with gRPC": with_grpc}}


def _http_port_of(work: Path) -> int:
    text = (work / "runtime-http.toml").read_text()
    return int(text.split("port = ")[1].split("\n")[0])


def print_tables(result: dict, clients: int, seconds: float) -> None:
    print(f"| protocol | batch | requests/s (median; min-max) | server CPU per request | failures |  "
          f"({clients} clients, {seconds:g} s rounds)")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['protocol']} | {r['batch']} | {r['requests_s']:.0f} ({r['min']:.0f}-{r['max']:.0f}) | "
              f"{r['server_cpu_ms']:.3f} ms | {r['failures']} |")
    rss = result["rss_mb"]
    print(f"\n| edgec serve | RSS |\n|---|---|\n| without [grpc] | {rss['without gRPC']:.1f} MB |\n"
          f"| with [grpc] | {rss['with gRPC']:.1f} MB |\n(each after the same 1 s of HTTP requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_tables(compare(args.clients, args.seconds, args.rounds), args.clients, args.seconds)


if __name__ == "__main__":
    main()
