"""``edgec quickstart``: train a CNN on real digits, convert it for two boards, compare.

It trains the digits CNN (a few seconds on a CPU), saves it as ``model.pt2``, converts it
for ``rpi4`` (TFLite) and ``x86-64`` (ONNX) at fp32 and int8, runs every bundle through
the edgec runtime on the held-out test digits, and tabulates accuracy, size and latency.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ..._quiet import quiet
from ...errors import BundleError
from ...runtime.bundle.model import load
from ..pipeline import convert
from ..progress import SILENT, Progress, Step
from ...runtime.timing import measure_latency
from .zoo import digits_cnn, digits_splits, evaluate_accuracy, export_pt2, seeded, train

DEVICES = ("rpi4", "x86-64")
PRECISIONS = ("fp32", "int8")


def measure_bundle(bundle: Path, x: np.ndarray, y: np.ndarray, *, budget_s: float = 1.0) -> dict[str, Any]:
    """Load a bundle with the runtime and measure test accuracy, file size and batch-1 latency."""
    model = load(bundle)
    name = model.inputs[0].name
    logits = next(iter(model.predict({name: x}).values()))
    one, batch = {name: x[:1]}, {name: x[:64]}
    latency = measure_latency(lambda: model.predict(one), threads=model.manifest.threads, budget_s=budget_s)
    # Batch 64 shows compute throughput; batch 1 on a tiny model mostly shows call overhead.
    batched = measure_latency(lambda: model.predict(batch), threads=model.manifest.threads, budget_s=budget_s,
                              min_runs=10)
    return {
        "bundle": str(bundle),
        "device": model.manifest.device["name"],
        "format": model.manifest.format,
        "precision": model.manifest.precision,
        "accuracy": float((logits.argmax(1) == y).mean()),
        "size_bytes": (bundle / model.manifest.model_file).stat().st_size,
        "latency_p50_ms": latency.p50_ms,
        "batch64_p50_ms": batched.p50_ms,
    }


def compare_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's size ratio, speed-up and accuracy change against its fp32 sibling."""
    base = {(r["device"], r["format"]): r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        ref = base.get((r["device"], r["format"]))
        r["size_vs_fp32"] = r["size_bytes"] / ref["size_bytes"] if ref else None
        r["speedup_vs_fp32"] = ref["latency_p50_ms"] / r["latency_p50_ms"] if ref else None
        r["batch64_speedup_vs_fp32"] = ref["batch64_p50_ms"] / r["batch64_p50_ms"] if ref else None
        r["accuracy_delta_points"] = 100 * (r["accuracy"] - ref["accuracy"]) if ref else None
    return rows


def run_quickstart(
    workdir: str | Path = "edgec-quickstart",
    *,
    force: bool = False,
    devices: tuple[str, ...] = DEVICES,
    progress: Progress | None = None,
    epochs: int = 10,
) -> dict[str, Any]:
    """Run the quick start in ``workdir``; return the model's fp32 test accuracy and the rows.

    Raises:
        BundleError: ``workdir`` exists and ``force`` is not set.
    """
    step = (progress or SILENT).stage
    work = Path(workdir)
    if work.exists() and not force:
        raise BundleError(f"{work} already exists: pass --force to redo the quick start there, or choose --workdir")
    with quiet():  # litert-torch's import reports every optional CUDA kernel torchao cannot load
        for module in ("torch", "sklearn", "onnxruntime", "litert_torch"):  # before anything is written
            need(module, extra="sdk", purpose="for the quick start")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        return _run(work, devices, step, epochs)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # a half-done quick start is not left behind
        raise


def _run(work: Path, devices: tuple[str, ...], step: Step, epochs: int) -> dict[str, Any]:
    data = digits_splits()
    with step(f"Training the digits CNN on {len(data.x_train)} real handwritten digits"):
        model = train(seeded(digits_cnn), data.x_train, data.y_train, epochs=epochs)
        torch_acc = evaluate_accuracy(model, data.x_test, data.y_test)
        export_pt2(model, data.x_train, work / "model.pt2")
        np.savez(work / "calib.npz", x=data.x_calib, labels=data.y_calib)
        np.savez(work / "test.npz", x=data.x_test, labels=data.y_test)
    rows = []
    for device in devices:
        for precision in PRECISIONS:
            out = work / "bundles" / f"{device}-{precision}"
            with step(f"Converting for {device} at {precision}"):
                convert(work / "model.pt2", device=device, precision=precision, calib=work / "calib.npz", out=out)
            with step(f"Measuring {device} {precision} on {len(data.x_test)} test digits"):
                rows.append(measure_bundle(out, data.x_test, data.y_test))
    summary = {"torch_test_accuracy": torch_acc, "test_samples": len(data.x_test), "rows": compare_rows(rows),
               "next": write_next_steps(work, data.x_test[:1])}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def write_next_steps(work: Path, sample: np.ndarray, device: str = "x86-64") -> list[str]:
    """``runtime.toml`` serving this host's int8 bundle as "digits", ``request.json`` (one test digit as an
    Open Inference Protocol request), and the commands that use them, with this quick start's own paths."""
    bundle = work / "bundles" / f"{device}-int8"
    (work / "runtime.toml").write_text(
        "# edgec serve --config runtime.toml: this host's int8 digits bundle (paths relative to this file)\n"
        'host = "127.0.0.1"\nport = 8080\nbudget_mb = 256\n\n'
        f'[[models]]\nname = "digits"\npath = "bundles/{bundle.name}"\n', encoding="utf-8")
    request = {"inputs": [{"name": "input", "shape": list(sample.shape), "datatype": "FP32",
                           "data": [round(float(v), 4) for v in sample.reshape(-1)]}]}
    (work / "request.json").write_text(json.dumps(request) + "\n", encoding="utf-8")
    return [f"cat {bundle}/report.md",
            f"edgec serve --config {work}/runtime.toml",
            f"curl -s localhost:8080/v2/models/digits/infer -d @{work}/request.json"]
