"""Mutation fuzzing of bundles: damaged model files and edited manifests, served as ``edgec serve`` serves them.

The benchmark is ``.venv/bin/python benchmarks/fuzz.py --cases 2000`` (a small run is part of
the tests); this module is its machinery, shared by both. Each case is one of the committed fixture bundles with its model file damaged
(bytes flipped, zeroed, spliced, truncated; the sha256 in the manifest re-computed so the
integrity check passes) or its manifest edited (a field removed, retyped, out of range).
Worker processes load each case the way the server does (a probe in a child process, then
the model cache) and run it on real digits; a worker that dies is a crash of the serving
process. Every outcome must be typed: refused with an EdgecError at load, or run (answers or
an EdgecError at predict). The table counts refused / ran / untyped / crashed per format.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SKELETON = 8192
BASES = {"onnx": ["onnx-fp32", "onnx-int8"], "tflite": ["tflite-fp32", "tflite-int8"]}
ODD_VALUES = [None, "abc", "", -1, 0, 1, 2**31, 100000, 1e300, -0.0, True, [], {}, [1, "x"], {"a": 1}, "foo",
              "../../etc/passwd", "float64", "int4", "CUDAExecutionProvider", "NaN"]


# -- making cases --------------------------------------------------------------------------------
def mutate_model(data: bytearray, rng: random.Random) -> str:
    """Damage a model file in place; return what was done."""
    kind = rng.choice(["flip", "zero", "splice", "truncate", "int"])
    n = len(data)
    # Most of a model file is weights, where damage only changes answers; half the cases aim at
    # the first and last 8 KB, where the graph's structure (tables, offsets, shapes) lives.
    skeleton = rng.random() < 0.5 and n > 2 * SKELETON
    where = (lambda: rng.choice([rng.randrange(SKELETON), n - 1 - rng.randrange(SKELETON)])) if skeleton \
        else (lambda: rng.randrange(n))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[where()] ^= rng.randrange(1, 256)
    elif kind == "zero":
        start = where()
        size = rng.randint(1, 64)
        data[start:start + size] = bytes(len(data[start:start + size]))
    elif kind == "splice":
        a, b, size = rng.randrange(n), where(), rng.randint(4, 256)
        chunk = data[a:a + size]
        data[b:b + len(chunk)] = chunk
    elif kind == "truncate":
        del data[max(1, where()):]
    else:
        at = min(where(), n - 4) & ~3
        data[at:at + 4] = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1, 2**20]).to_bytes(4, "little")
    return kind


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _leaves(value, (*path, i))
    return out


def mutate_manifest(manifest: dict[str, Any], rng: random.Random) -> str:
    """Edit a manifest in place (never its model file's sha256); return what was done."""
    paths = [p for p in _leaves(manifest) if p[0] != "files"]
    path = rng.choice(paths)
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    kind = rng.choice(["set", "set", "set", "delete", "extend"])
    if kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif kind == "extend" and isinstance(parent[path[-1]], list) and parent[path[-1]]:
        parent[path[-1]].append(json.loads(json.dumps(parent[path[-1]][-1])))
    else:
        kind = "set"
        parent[path[-1]] = rng.choice(ODD_VALUES)
    return f"{kind} {'.'.join(map(str, path))}"


def make_case(base: Path, out: Path, rng: random.Random) -> str:
    shutil.copytree(base, out)
    manifest = json.loads((out / "manifest.json").read_text())
    model = out / manifest["model_file"]
    if rng.random() < 0.6:
        data = bytearray(model.read_bytes())
        what = f"model {mutate_model(data, rng)}"
        model.write_bytes(bytes(data))
        manifest["files"][manifest["model_file"]] = hashlib.sha256(bytes(data)).hexdigest()
    else:
        what = f"manifest {mutate_manifest(manifest, rng)}"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return what


# -- running cases (worker process) ------------------------------------------------------------
def worker(isolate: bool = True) -> None:
    """Read case folders on stdin; load each as the server does and run it; answer one JSON line each."""
    import traceback

    import numpy as np

    from edgec.errors import EdgecError
    from edgec.runtime.serve.cache import ModelCache

    answers = os.fdopen(os.dup(1), "w", buffering=1)  # answers only: native code printing to fd 1 goes to stderr
    os.dup2(2, 1)
    with np.load(FIXTURES / "digits-test.npz") as npz:
        x = npz["x"][:3]
    for line in sys.stdin:
        case_id, _, folder = line.strip().partition(" ")
        path = Path(folder)
        stage = "load"
        try:
            cache = ModelCache(2**30, isolate=isolate)
            cache.register("m", path)
            model = cache.get("m")
            stage = "predict"
            spec = model.inputs[0]
            feeds = {spec.name: x if spec.takes_floats else np.zeros((3, *[d or 1 for d in spec.shape[1:]]), spec.dtype)}
            model.predict(feeds)
            result = {"outcome": "ran"}
        except EdgecError as exc:
            result = {"outcome": "refused" if stage == "load" else "ran", "typed": f"{type(exc).__name__} at {stage}",
                      "message": str(exc)[:200]}
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result = {"outcome": "untyped", "message": f"{type(exc).__name__}: {str(exc)[:150]} "
                                                       f"({Path(where.filename).name}:{where.lineno}, at {stage})"}
        answers.write(json.dumps({**result, "id": case_id}) + "\n")


class Workers:
    """A worker process; one that dies (or hangs) on a case is a crash of the serving process, and is replaced."""

    def __init__(self, isolate: bool = True) -> None:
        self._proc: subprocess.Popen | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._command = [sys.executable, __file__, "--worker"] + ([] if isolate else ["--no-isolate"])
        self._ids = itertools.count()

    def _start(self) -> None:
        self._proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._answers = answers = queue.Queue()
        stdout = self._proc.stdout

        def read() -> None:
            for line in stdout:
                answers.put(line)
            answers.put(None)

        threading.Thread(target=read, daemon=True).start()

    def run(self, case: Path, timeout_s: float = 300.0) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        case_id = str(next(self._ids))
        self._proc.stdin.write(f"{case_id} {case}\n")
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                return {"outcome": "crashed", "message": f"the serving process hung for {timeout_s:g}s"}
            if line is None:
                code = self._proc.wait()
                self._proc = None
                return {"outcome": "crashed", "message": f"the serving process died (exit {code})"}
            answer = json.loads(line)
            if answer.get("id") == case_id:
                return answer

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(30)


def fuzz(cases: int, formats: list[str], seed: int = 0, progress: Any = None,
         isolate: bool = True) -> dict[str, dict[str, Any]]:
    """Run ``cases`` mutations per format; return counts and examples per format."""
    rng = random.Random(seed)
    results: dict[str, dict[str, Any]] = {}
    workers = Workers(isolate)
    try:
        with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as tmp:
            for fmt in formats:
                counts = {"refused": 0, "ran": 0, "untyped": 0, "crashed": 0}
                examples: dict[str, list[str]] = {"untyped": [], "crashed": [], "refused": []}
                started = time.perf_counter()
                for i in range(cases):
                    case = Path(tmp) / f"{fmt}-{i}"
                    what = make_case(FIXTURES / "bundles" / rng.choice(BASES[fmt]), case, rng)
                    result = workers.run(case)
                    counts[result["outcome"]] += 1
                    bucket = examples.get(result["outcome"])
                    if bucket is not None and len(bucket) < 5:
                        bucket.append(f"{what}: {result.get('message', '')}")
                    shutil.rmtree(case, ignore_errors=True)
                    if progress:
                        progress(fmt, i + 1, cases)
                results[fmt] = {"counts": counts, "examples": examples, "seconds": time.perf_counter() - started}
    finally:
        workers.close()
    return results


if __name__ == "__main__":  # a worker process (see Workers)
    worker(isolate="--no-isolate" not in sys.argv)
