"""The on-device runtime, measured: overhead, where a request's time goes, batching over HTTP, memory.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/runtime.py``.
Bundles are built first in a subprocess (torch stays out of the measuring process, so its
RSS is what a board running ``edgec.runtime`` would see). Then, on this host:

1. per-request overhead of ``LoadedModel.predict`` and of the batcher path over a bare
   ``InferenceSession.run`` / TFLite interpreter call at batch 1 (p50, alternating rounds);
2. where one request's time goes: the HTTP server, decoding the body, the hand-off to the
   model's batcher and back, the backend call at batch 1 and per sample at batch 8 and 16,
   encoding the answer;
3. 16 concurrent HTTP clients on the Open Inference Protocol route (binary tensors, as
   ``tritonclient`` sends them; ``wrk`` when installed, so the client's own cost stays
   small), dynamic batching off and on, in alternating rounds: the batched/unbatched ratio;
   the same clients in-process, without HTTP;
4. RSS above the pre-load baseline while six ~17 MB models are loaded and evicted in turn
   under a 128 MB cache budget (sampled every millisecond), against the budget;
5. the runtime's footprint: RSS after ``import edgec.runtime``, after importing the HTTP
   server, and of a serving process with one TFLite or ONNX bundle loaded;
6. HTTP (binary tensors) against gRPC at 16 clients with tritonclient, and the RSS gRPC adds
   (``benchmarks/grpc_load.py``; ``--no-grpc`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def build(root: Path) -> None:
    """Phase 1 (subprocess, uses torch): the bundles."""
    from edgec import convert
    from edgec.sdk.examples.zoo import digits_cnn, digits_splits, export_pt2, seeded, train

    data = digits_splits()
    np.savez(root / "calib.npz", x=data.x_calib)
    np.save(root / "test.npy", data.x_test)
    cnn = train(seeded(digits_cnn, width=128), data.x_train, data.y_train, epochs=3)
    export_pt2(cnn, data.x_train, root / "cnn.pt2")
    convert(root / "cnn.pt2", device="x86-64", precision="fp32", calib=root / "calib.npz", out=root / "cnn-onnx")
    convert(root / "cnn.pt2", device="rpi4", precision="int8", calib=root / "calib.npz", out=root / "cnn-tflite")
    small = train(seeded(digits_cnn), data.x_train, data.y_train, epochs=3)  # the zoo's default width (32)
    export_pt2(small, data.x_train, root / "cnn32.pt2")
    convert(root / "cnn32.pt2", device="x86-64", precision="fp32", calib=root / "calib.npz", out=root / "cnn32-onnx")
    import torch

    for i in range(6):  # ~4.3M-parameter MLPs, different weights: six different bundles
        torch.manual_seed(i)
        mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2048), torch.nn.ReLU(),
                                  torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10)).eval()
        export_pt2(mlp, data.x_train, root / f"mlp{i}.pt2")
        convert(root / f"mlp{i}.pt2", device="x86-64", precision="fp32", calib=root / "calib.npz",
                out=root / f"mlp{i}", latency_budget_s=0.1)


def overhead(root: Path, x: np.ndarray) -> list[dict]:
    from edgec.runtime import load
    from edgec.runtime.serve.batcher import Batcher
    from edgec.runtime.config import BatcherConfig
    from edgec.runtime.timing import paired_speedup

    rows = []
    one = x[:1]
    for name in ("cnn-onnx", "cnn-tflite"):
        model = load(root / name)
        spec = model.inputs[0]
        if model.manifest.format == "onnx":
            session = model.backend.session

            def bare() -> object:
                return session.run(None, {spec.name: one})
        else:  # the interpreter's own calls: set the input, invoke, copy the output out
            interpreter = model.backend.interpreter
            index = model.backend.details()[0][spec.model_name]["index"]
            out_index = model.backend.details()[1][model.backend.output_names[0]]["index"]

            def bare() -> object:
                interpreter.set_tensor(index, one)
                interpreter.invoke()
                return interpreter.get_tensor(out_index)
        ratio, lat_bare, lat_rt = paired_speedup(bare, lambda: model.predict(one), threads=2, budget_s=4)
        batcher = Batcher(name, model.predict, BatcherConfig(max_batch_size=1, max_queue_delay_ms=0))
        ratio_b, _, lat_b = paired_speedup(bare, lambda: batcher.run({spec.name: one}), threads=2, budget_s=4)
        batcher.close()
        rows.append({"bundle": name, "bare_p50_ms": lat_bare.p50_ms, "predict_p50_ms": lat_rt.p50_ms,
                     "predict_overhead": 1 / ratio - 1, "batcher_p50_ms": lat_b.p50_ms, "batcher_overhead": 1 / ratio_b - 1})
    return rows


def oip_request(x: np.ndarray, model: str = "cnn") -> bytes:
    """One Open Inference Protocol infer request as tritonclient sends it: a JSON head, then the tensor's bytes."""
    raw = np.ascontiguousarray(x, np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    body = head + raw
    return (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: edgec\r\nInference-Header-Content-Length: %d\r\n"
            b"Content-Length: %d\r\n\r\n" % (model.encode(), len(head), len(body)) + body)


def _load_client(port: int, connections: int, seconds: float, requests: list[bytes], results: Any) -> None:
    """One load-generating process (when wrk is not installed): ``connections`` keep-alive
    connections, each sending its next request as soon as its answer is complete."""
    import selectors
    import socket

    sel = selectors.DefaultSelector()
    for k in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(requests[k % len(requests)])
        sel.register(sock, selectors.EVENT_READ, [b"", k])
    done, errors = 0, 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        for key, _ in sel.select(0.5):
            state = key.data
            state[0] += key.fileobj.recv(65536)
            head, sep, rest = state[0].partition(b"\r\n\r\n")
            if not sep:
                continue
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                         .split(b":")[1])
            if len(rest) < length:
                continue
            done, errors = (done + 1, errors) if head.startswith(b"HTTP/1.1 200") else (done, errors + 1)
            state[0] = rest[length:]
            state[1] += connections
            key.fileobj.sendall(requests[state[1] % len(requests)])
    results.put((done, errors))


def _load(url: str, request: bytes, clients: int, seconds: float, work: Path) -> tuple[float, int]:
    """Requests/s and failed requests from ``clients`` keep-alive connections sending ``request``."""
    import multiprocessing
    import re
    import shutil

    port = int(url.rsplit(":", 1)[1])
    if shutil.which("wrk"):
        head, _, body = request.partition(b"\r\n\r\n")
        (work / "body.bin").write_bytes(body)
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ")
        headers = "\n".join(f'wrk.headers["{k}"] = "{v.strip()}"' for k, _, v in (h.partition(":") for h in lines[1:])
                            if k.lower() not in ("host", "content-length"))
        (work / "req.lua").write_text(f'wrk.method = "{method}"\nwrk.path = "{path}"\n'
                                      f'local f = io.open("{work / "body.bin"}", "rb"); wrk.body = f:read("*a"); '
                                      f'f:close()\n{headers}\n')
        out = subprocess.run(["wrk", "-t", "1", "-c", str(clients), "-d", f"{seconds:g}s", "-s", str(work / "req.lua"),
                              url], capture_output=True, text=True, check=True).stdout
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), int(bad.group(1)) if bad else 0
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running onnxruntime threads
    results = ctx.Queue()
    procs = [ctx.Process(target=_load_client, args=(port, clients // 2, seconds, [request], results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    counts = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(c[0] for c in counts) / seconds, sum(c[1] for c in counts)


MODES = {"unbatched (max_batch_size 1)": 1, "batched (max_batch_size 8)": 8, "batched (max_batch_size 16)": 16}


def throughput(root: Path, x: np.ndarray, bundle: str, clients: int = 16, seconds: float = 3.0,
               rounds: int = 7) -> list[dict]:
    """Requests/s of ``clients`` keep-alive connections on the OIP route, batching off and on, in
    alternating rounds (this host's speed drifts; each round's ratio pairs runs made moments apart)."""
    from edgec.runtime.config import ServeConfig
    from edgec.runtime.server import Server

    request = oip_request(x[:1])
    runs: dict[str, list[tuple[float, float, float, int]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for mode, batch in MODES.items():
                config = ServeConfig.from_dict({"port": 0, "batcher": {"max_batch_size": batch,
                                                                       "max_queue": 256},
                                                "models": [{"name": "cnn", "path": str(root / bundle)}]})
                server = Server(config).start()
                cpu = time.process_time()
                rate, errors = _load(server.url, request, clients, seconds, Path(tmp))
                cpu = time.process_time() - cpu
                sizes = server.runtime.batchers["cnn"].describe()["stats"]["batch_sizes"]
                server.stop()
                mean_batch = sum(int(k) * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
                runs[mode].append((rate, mean_batch, 1e6 * cpu / max(rate * seconds, 1), errors))
    base = runs[next(iter(MODES))]
    rows = []
    for mode, values in runs.items():
        rows.append({"mode": mode, "requests_per_s": float(np.median([v[0] for v in values])),
                     "range": (min(v[0] for v in values), max(v[0] for v in values)),
                     "vs_unbatched": float(np.median([v[0] / b[0] for v, b in zip(values, base)])),
                     "mean_batch": float(np.median([v[1] for v in values])),
                     "server_cpu_us": float(np.median([v[2] for v in values])), "errors": sum(v[3] for v in values)})
    return rows


def stages(root: Path, x: np.ndarray, bundle: str) -> list[tuple[str, float, str]]:
    """Where one request's time goes, stage by stage (µs, this host)."""
    import asyncio
    import io

    from edgec.runtime import load, oip
    from edgec.runtime.serve.bodies import decode_inputs, encode_outputs
    from edgec.runtime.serve.batcher import Batcher
    from edgec.runtime.config import BatcherConfig
    from edgec.runtime.serve.waiter import Waiter

    def timed(fn: Any, n: int = 2000) -> float:
        for _ in range(50):
            fn()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e6 * (time.perf_counter() - started) / n

    model = load(root / bundle)
    specs = {t.name: t for t in model.inputs}
    head, _, body = oip_request(x[:1]).partition(b"\r\n\r\n")
    head_length = next(line.split(b":")[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"inference-header-content-length")).decode()
    request = oip.parse_infer(body, head_length, specs)
    outputs = model.predict(x[:1])
    buf = io.BytesIO()
    np.save(buf, x[:1])
    npy = buf.getvalue()
    rows = [("HTTP server: parse, route, answer (a GET /v2/health/live, server CPU)", _http_only(root, bundle),
             "uvicorn + httptools (+ uvloop); 16 keep-alive clients")]
    rows.append(("decode: OIP binary body", timed(lambda: oip.parse_infer(body, head_length, specs)), ""))
    rows.append(("decode: .npy body (/v1)", timed(lambda: decode_inputs(npy, "application/x-npy", model)), ""))
    rows.append(("encode: OIP binary answer", timed(lambda: oip.encode_outputs("cnn", "v", outputs, request)), ""))
    rows.append(("encode: JSON answer (/v1)", timed(lambda: encode_outputs("cnn", outputs, "")), ""))
    noop = Batcher("noop", lambda feeds: feeds, BatcherConfig(max_batch_size=1))  # the hand-off alone
    feeds = {model.inputs[0].name: x[:1]}

    async def handoff(n: int = 3000) -> float:
        waiter = Waiter(asyncio.get_running_loop())
        for _ in range(100):
            await waiter.wait(noop.submit(feeds, inline=False), 10, "late")
        started = time.perf_counter()
        for _ in range(n):
            await waiter.wait(noop.submit(feeds, inline=False), 10, "late")
        return 1e6 * (time.perf_counter() - started) / n

    rows.append(("hand-off: event loop -> batcher's worker -> event loop", asyncio.run(handoff()),
                 "a request alone (a fast model alone runs on the loop instead); a batch wakes the loop once"))
    noop.close()
    rows.append(("backend call, batch 1", timed(lambda: model.predict(x[:1])), f"{bundle}, profile's threads"))
    for batch in (8, 16):
        rows.append((f"backend call, per sample at batch {batch}", timed(lambda: model.predict(x[:batch]), 300) / batch, ""))
    return rows


def _http_only(root: Path, bundle: str, clients: int = 16, seconds: float = 2.0) -> float:
    """Server CPU per request for a route that does nothing but answer."""
    from edgec.runtime.config import ServeConfig
    from edgec.runtime.server import Server

    server = Server(ServeConfig.from_dict({"port": 0, "models": [{"name": "cnn", "path": str(root / bundle)}]})).start()
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: edgec\r\n\r\n"
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        rate, _ = _load(server.url, request, clients, seconds, Path(tmp))
        cpu = time.process_time() - cpu
    server.stop()
    return 1e6 * cpu / (rate * seconds)


_FOOTPRINT = """
import json, os, sys
def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out = {"python": rss_bytes()}
import edgec.runtime
out["import edgec.runtime"] = rss_bytes()
from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server
out["import the HTTP server"] = rss_bytes()
if len(sys.argv) > 1:
    server = Server(ServeConfig.from_dict({"port": 0, "models": [{"name": "m", "path": sys.argv[1]}]})).start()
    import urllib.request
    urllib.request.urlopen(server.url + "/v2/health/ready").read()
    out["serving, bundle loaded"] = rss_bytes()
    server.stop()
print(json.dumps(out))
"""


def footprint(root: Path) -> dict[str, dict[str, float]]:
    """RSS (MB) of fresh processes: imports, then a server with one bundle loaded."""
    found = {}
    for label, bundle in (("TFLite int8 bundle", "cnn-tflite"), ("ONNX fp32 bundle", "cnn32-onnx")):
        out = subprocess.run([sys.executable, "-c", _FOOTPRINT, str(root / bundle)], capture_output=True, text=True,
                             check=True).stdout
        found[label] = {k: v / 2**20 for k, v in json.loads(out).items()}
    return found


def throughput_in_process(root: Path, x: np.ndarray, bundle: str, clients: int = 16, seconds: float = 3.0) -> list[dict]:
    """The same comparison without HTTP: ``clients`` threads calling ``Runtime.predict``."""
    from edgec.runtime.config import ServeConfig
    from edgec.runtime.serve.runtime import Runtime

    rows = []
    for label, batch in (("unbatched (max_batch_size 1)", 1), ("batched (max_batch_size 16)", 16)):
        rt = Runtime(ServeConfig.from_dict({"batcher": {"max_batch_size": batch, "max_queue_delay_ms": 2,
                                                        "max_queue": 256},
                                            "models": [{"name": "cnn", "path": str(root / bundle)}]}))
        name = rt.cache.get("cnn").inputs[0].name
        stop = time.perf_counter() + seconds
        counts = [0] * clients

        def client(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                rt.predict("cnn", {name: x[i % 64:i % 64 + 1]})
                counts[k] += 1
                i += clients

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        sizes = rt.batchers["cnn"].describe()["stats"]["batch_sizes"]
        rt.close()
        rows.append({"mode": label, "requests_per_s": sum(counts) / seconds,
                     "mean_batch": sum(int(k) * v for k, v in sizes.items()) / max(1, sum(sizes.values()))})
    return rows


def memory(root: Path, budget_mb: float = 128.0, rounds: int = 3) -> dict:
    from edgec.runtime.serve.cache import ModelCache
    from edgec.runtime.system import rss_bytes

    cache = ModelCache(int(budget_mb * 2**20))
    names = [f"mlp{i}" for i in range(6)]
    for n in names:
        cache.register(n, root / n)
    baseline = rss_bytes()
    peak = [baseline]
    running = True

    def sample() -> None:
        while running:
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    hits = []
    for _ in range(rounds):
        for n in names:
            cache.get(n)
            t = time.perf_counter()
            cache.get(n)
            hits.append(time.perf_counter() - t)
    running = False
    sampler.join()
    st = cache.stats
    return {"budget_mb": budget_mb, "model_file_mb": (root / "mlp0" / "model.onnx").stat().st_size / 2**20,
            "peak_above_baseline_mb": (peak[0] - baseline) / 2**20, "loads": st.misses, "evictions": st.evictions,
            "cold_load_ms": 1e3 * st.load_seconds / st.misses, "warmup_ms": 1e3 * st.warmup_seconds / st.misses,
            "warm_hit_us": 1e6 * float(np.median(hits))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bundles", type=Path, help="Reuse bundles built into this folder (built there if empty).")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-grpc", action="store_true", help="Leave out HTTP vs gRPC (needs edgec[grpc]).")
    args = parser.parse_args()
    if args.build:
        build(args.build)
        return
    from rich.console import Console

    console = Console(width=150)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.bundles or Path(tmp)
        if not (root / "cnn32-onnx").is_dir():
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--build", str(root)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        x = np.load(root / "test.npy")
        results = {"overhead": overhead(root, x), "stages": {b: stages(root, x, b) for b in CNNS},
                   "throughput": {b: throughput(root, x, b) for b in CNNS},
                   "in_process": {b: throughput_in_process(root, x, b) for b in CNNS},
                   "memory": memory(root), "footprint": footprint(root)}
    for table in tables(results):
        console.print(table)
    if not args.no_grpc:
        import grpc_load  # (beside this script)

        results["grpc"] = grpc_load.compare(clients=16)
        grpc_load.print_tables(results["grpc"], 16, 5.0)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


CNNS = {"cnn32-onnx": "digits CNN, width 32 (the zoo's default), ONNX fp32", "cnn-onnx": "digits CNN, width 128, ONNX fp32"}


def tables(results: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    out = []
    t = Table(title="Per-request overhead at batch 1 over the bare backend call (p50, alternating rounds; goal ≤ 5%)")
    for col in ("bundle", "bare", "predict()", "overhead", "via batcher", "overhead"):
        t.add_column(col, justify="left" if col == "bundle" else "right")
    for r in results["overhead"]:
        t.add_row(r["bundle"], f"{r['bare_p50_ms'] * 1e3:.1f} µs", f"{r['predict_p50_ms'] * 1e3:.1f} µs",
                  f"{100 * r['predict_overhead']:+.1f}%", f"{r['batcher_p50_ms'] * 1e3:.1f} µs",
                  f"{100 * r['batcher_overhead']:+.1f}%")
    out.append(t)
    for bundle, what in CNNS.items():
        t = Table(title=f"Where a request's time goes: {what} (µs on this host)")
        for col in ("stage", "µs", "note"):
            t.add_column(col, justify="right" if col == "µs" else "left")
        for stage, us, note in results["stages"][bundle]:
            t.add_row(stage, f"{us:.1f}", note)
        out.append(t)
    for bundle, what in CNNS.items():
        rows = results["throughput"][bundle]
        t = Table(title=f"16 concurrent HTTP clients on the Open Inference Protocol route (binary tensors, keep-alive), "
                        f"{what}; median of 7 alternating rounds of 3 s (goal: batched ≥ 1.5x)")
        for col in ("mode", "requests/s", "range", "vs unbatched", "mean batch", "server CPU / request", "errors"):
            t.add_column(col, justify="left" if col == "mode" else "right")
        for r in rows:
            t.add_row(r["mode"], f"{r['requests_per_s']:.0f}", f"{r['range'][0]:.0f}-{r['range'][1]:.0f}",
                      f"{r['vs_unbatched']:.2f}x", f"{r['mean_batch']:.1f}", f"{r['server_cpu_us']:.0f} µs",
                      str(r["errors"]))
        out.append(t)
        rows = results["in_process"][bundle]
        t = Table(title=f"The same 16 clients in-process (Runtime.predict threads, no HTTP), {what}, 3 s each")
        for col in ("mode", "requests/s", "mean batch", "vs unbatched"):
            t.add_column(col, justify="left" if col == "mode" else "right")
        for r in rows:
            t.add_row(r["mode"], f"{r['requests_per_s']:.0f}", f"{r['mean_batch']:.1f}",
                      f"{r['requests_per_s'] / rows[0]['requests_per_s']:.2f}x")
        out.append(t)
    mem = results["memory"]
    t = Table(title="Cache under a memory budget: six models cycled 3 times (goal: peak ≤ budget + 10%)")
    for col in ("budget", "model file", "peak RSS above baseline", "loads", "evictions", "cold load", "warm-up", "warm hit"):
        t.add_column(col, justify="right")
    t.add_row(f"{mem['budget_mb']:.0f} MB", f"{mem['model_file_mb']:.1f} MB", f"{mem['peak_above_baseline_mb']:.1f} MB",
              str(mem["loads"]), str(mem["evictions"]), f"{mem['cold_load_ms']:.1f} ms", f"{mem['warmup_ms']:.2f} ms",
              f"{mem['warm_hit_us']:.1f} µs")
    out.append(t)
    t = Table(title="Footprint: RSS of a fresh process (goals: ≤ 60 MB after import edgec.runtime, ≤ 80 MB serving a "
                    "TFLite bundle)")
    steps = list(next(iter(results["footprint"].values())))
    t.add_column("bundle")
    for step in steps:
        t.add_column(step, justify="right")
    for label, values in results["footprint"].items():
        t.add_row(label, *(f"{values[step]:.1f} MB" for step in steps))
    out.append(t)
    return out


if __name__ == "__main__":
    main()
