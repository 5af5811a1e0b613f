"""The on-device runtime, measured: overhead, batching throughput, memory budget, load times.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/runtime.py``.
Bundles are built first in a subprocess (torch stays out of the measuring process, so its
RSS is what a board running ``edgec.runtime`` would see). Then, on this host:

1. per-request overhead of ``LoadedModel.predict`` and of the batcher path over a bare
   ``InferenceSession.run`` / TFLite signature call at batch 1 (p50, alternating rounds);
2. throughput of 16 concurrent clients over HTTP (keep-alive, .npy bodies, from two client
   processes), dynamic batching on vs off, for two CNNs, and the same clients in-process;
3. RSS above the pre-load baseline while six ~17 MB models are loaded and evicted in turn
   under a 128 MB cache budget (sampled every millisecond), against the budget;
4. cold load (+ warm-up) and warm hit times from the cache's own statistics.
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
    from edgec.runtime.batcher import Batcher
    from edgec.runtime.config import BatcherConfig
    from edgec.sdk.verify.timing import paired_speedup

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


def _load_client(port: int, connections: int, seconds: float, bodies: list[bytes], results: Any) -> None:
    """One load-generating process: ``connections`` keep-alive connections, each sending its
    next request as soon as its answer is complete (raw sockets: the client's own cost stays
    small, so the server is what is measured)."""
    import selectors
    import socket

    requests = [b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: edgec\r\nContent-Type: application/x-npy\r\n"
                b"Accept: application/x-npy\r\nContent-Length: %d\r\n\r\n" % len(body) + body for body in bodies]
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
            if head.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                errors += 1
            state[0] = rest[length:]
            state[1] += connections
            key.fileobj.sendall(requests[state[1] % len(requests)])
    results.put((done, errors))


def throughput(root: Path, x: np.ndarray, bundle: str, clients: int = 16, seconds: float = 5.0) -> list[dict]:
    """Requests/s from ``clients`` keep-alive connections (.npy bodies) spread over two
    client processes, dynamic batching off and on."""
    import io
    import multiprocessing

    from edgec.runtime.config import ServeConfig
    from edgec.runtime.server import Server

    bodies = []
    for i in range(64):
        buf = io.BytesIO()
        np.save(buf, x[i:i + 1])
        bodies.append(buf.getvalue())
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running onnxruntime threads
    rows = []
    for label, batch in (("unbatched (max_batch_size 1)", 1), ("batched (max_batch_size 16)", 16)):
        config = ServeConfig.from_dict({"port": 0, "batcher": {"max_batch_size": batch, "max_queue_delay_ms": 2,
                                                               "max_queue": 256},
                                        "models": [{"name": "cnn", "path": str(root / bundle)}]})
        server = Server(config).start()
        results = ctx.Queue()
        procs = [ctx.Process(target=_load_client, args=(server.address[1], clients // 2, seconds, bodies, results))
                 for _ in range(2)]
        cpu = time.process_time()
        for p in procs:
            p.start()
        counts = [results.get() for _ in procs]
        for p in procs:
            p.join()
        cpu = time.process_time() - cpu
        stats = server.runtime.batchers["cnn"].describe()["stats"]
        server.stop()
        done = sum(c[0] for c in counts)
        sizes = stats["batch_sizes"]
        mean_batch = sum(int(k) * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        rows.append({"mode": label, "requests_per_s": done / seconds, "mean_batch": mean_batch,
                     "errors": sum(c[1] for c in counts), "server_cpu_us": 1e6 * cpu / max(done, 1)})
    return rows


def throughput_in_process(root: Path, x: np.ndarray, bundle: str, clients: int = 16, seconds: float = 3.0) -> list[dict]:
    """The same comparison without HTTP: ``clients`` threads calling ``Runtime.predict``."""
    from edgec.runtime.config import ServeConfig
    from edgec.runtime.serving import Runtime

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
    from edgec.runtime.cache import ModelCache
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.build:
        build(args.build)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--build", str(root)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        x = np.load(root / "test.npy")
        over = overhead(root, x)
        cnns = {"cnn32-onnx": "digits CNN, width 32 (the zoo's default), ONNX fp32",
                "cnn-onnx": "digits CNN, width 128, ONNX fp32"}
        thr = {b: throughput(root, x, b) for b in cnns}
        inproc = {b: throughput_in_process(root, x, b) for b in cnns}
        mem = memory(root)
    t = Table(title="Per-request overhead at batch 1 over the bare backend call (p50, alternating rounds; goal ≤ 5%)")
    for col in ("bundle", "bare", "predict()", "overhead", "via batcher", "overhead"):
        t.add_column(col, justify="left" if col == "bundle" else "right")
    for r in over:
        t.add_row(r["bundle"], f"{r['bare_p50_ms'] * 1e3:.1f} µs", f"{r['predict_p50_ms'] * 1e3:.1f} µs",
                  f"{100 * r['predict_overhead']:+.1f}%", f"{r['batcher_p50_ms'] * 1e3:.1f} µs",
                  f"{100 * r['batcher_overhead']:+.1f}%")
    console.print(t)
    for bundle, what in cnns.items():
        for title, rows in ((f"16 concurrent HTTP clients (2 processes, keep-alive, .npy bodies), {what}, 5 s each "
                             "(goal: batched ≥ 1.5x)", thr[bundle]),
                            (f"The same 16 clients in-process (Runtime.predict threads, no HTTP), {what}, 3 s each",
                             inproc[bundle])):
            t = Table(title=title)
            cols = ["mode", "requests/s", "mean batch", "vs unbatched"] + (["server CPU / request", "errors"]
                                                                          if "errors" in rows[0] else [])
            for col in cols:
                t.add_column(col, justify="left" if col == "mode" else "right")
            for r in rows:
                extra = [f"{r['server_cpu_us']:.0f} µs", str(r["errors"])] if "errors" in r else []
                t.add_row(r["mode"], f"{r['requests_per_s']:.0f}", f"{r['mean_batch']:.1f}",
                          f"{r['requests_per_s'] / rows[0]['requests_per_s']:.2f}x", *extra)
            console.print(t)
    t = Table(title="Cache under a memory budget: six models cycled 3 times (goal: peak ≤ budget + 10%)")
    for col in ("budget", "model file", "peak RSS above baseline", "loads", "evictions", "cold load", "warm-up", "warm hit"):
        t.add_column(col, justify="right")
    t.add_row(f"{mem['budget_mb']:.0f} MB", f"{mem['model_file_mb']:.1f} MB", f"{mem['peak_above_baseline_mb']:.1f} MB",
              str(mem["loads"]), str(mem["evictions"]), f"{mem['cold_load_ms']:.1f} ms", f"{mem['warmup_ms']:.2f} ms",
              f"{mem['warm_hit_us']:.1f} µs")
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps({"overhead": over, "throughput": thr, "in_process": inproc, "memory": mem},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
