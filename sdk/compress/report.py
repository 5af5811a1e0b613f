"""The compression report: what each step changed and what it measured, as JSON, Markdown and a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..report.markdown import human_bytes
from ..report.page import Report
from ..report.plots import pyplot
from .meter import StepResult


def percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def build_report(cfg: Any, steps: list[StepResult], model: Any, teachers: Sequence[Any], plot_name: str,
                 trained_on: str = "cpu") -> Report:
    """What each step changed and measured (``data``), with its page: the steps table, then the summary."""
    first, last = steps[0], steps[-1]
    notes = []
    if not cfg.structured and cfg.prune > 0:
        notes.append(
            f"Unstructured pruning zeroed {last.weight_sparsity:.0%} of the weights, but the tensors keep their "
            f"shape: the exported file is {last.onnx_bytes / first.onnx_bytes:.0%} of the original and a dense "
            f"runtime multiplies the zeros, so it is not faster (measured {last.speedup_b1:.2f}x at batch 1). "
            "Use --structured to remove channels, or compress the file (zip) if only download size matters."
        )
    drop = (100 * (first.accuracy - last.accuracy)) if first.accuracy is not None and last.accuracy is not None else None
    def name(m: Any) -> str:
        return str(m) if isinstance(m, (str, Path)) else type(m).__name__

    data = {
        "title": f"{name(model)} compressed" + (f", distilled from {', '.join(map(name, teachers))}" if teachers else ""),
        "config": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                   for k, v in asdict(cfg).items() if k != "force"},
        "steps": [asdict(s) for s in steps],
        "summary": {
            "params_vs_original": last.params / first.params,
            "macs_vs_original": last.macs / first.macs if first.macs else None,
            "onnx_size_vs_original": last.onnx_bytes / first.onnx_bytes,
            "speedup_b1": last.speedup_b1,
            "speedup_b64": last.speedup_b64,
            "accuracy_drop_points": drop,
            "weight_sparsity": last.weight_sparsity,
        },
        "notes": notes,
        "measured": "ONNX exports timed with onnxruntime on this host against the original export, "
                    "in alternating rounds; MACs counted by torch-pruning for one sample",
        "plot": plot_name,
        "trained_on": trained_on,
    }
    return _page(data)


def _page(report: dict[str, Any]) -> Report:
    lead = [report["measured"] + ".", "",
            "| step | change | parameters | MACs | weight sparsity | ONNX size | latency b1 | speed-up b1 | "
            "speed-up b64 | accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["steps"]:
        lead.append(f"| {s['step']} | {s['label']} | {s['params']:,} | {s['macs']:,} | {s['weight_sparsity']:.0%} | "
                    f"{human_bytes(s['onnx_bytes'])} | {s['latency_b1_ms']:.3f} ms | {s['speedup_b1']:.2f}x | "
                    f"{s['speedup_b64']:.2f}x | {percent(s['accuracy'])} |")
    sm = report["summary"]
    summary = [f"- Parameters: {sm['params_vs_original']:.0%} of the original; "
               f"ONNX file {sm['onnx_size_vs_original']:.0%}.",
               f"- Speed: {sm['speedup_b1']:.2f}x at batch 1, {sm['speedup_b64']:.2f}x at batch 64 (measured)."]
    if sm["accuracy_drop_points"] is not None:
        summary.append(f"- Accuracy: {-sm['accuracy_drop_points']:+.2f} points vs the original.")
    summary.append(f"- Fine-tuned on {report.get('trained_on', 'cpu')}; measured and exported on the CPU.")
    summary += [f"- Note: {n}" for n in report["notes"]]
    summary += ["", f"![accuracy vs sparsity and latency]({report['plot']})"]
    return Report(f"edgec compress: {report['title']}", report, lead=tuple(lead)).add("Summary", summary)


def plot(steps: list[StepResult], path: Path, title: str) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    acc = [100 * s.accuracy if s.accuracy is not None else np.nan for s in steps]
    removed = [100 * (1 - s.params / steps[0].params) if s.weight_sparsity == steps[0].weight_sparsity
               else 100 * s.weight_sparsity for s in steps]
    a.plot(removed, acc, "o-")
    a.set_xlabel("parameters removed or zeroed (%)")
    a.set_ylabel("accuracy (%)")
    a.grid(alpha=0.3)
    b.plot([s.latency_b1_ms for s in steps], acc, "o-")
    b.set_xlabel("exported ONNX latency, batch 1 (ms, this host)")
    b.grid(alpha=0.3)
    for s, x, y in zip(steps, removed, acc):
        a.annotate(str(s.step), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
