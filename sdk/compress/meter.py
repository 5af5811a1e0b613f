"""Measure a module as a board would run it: exported to ONNX, timed with onnxruntime on this host.

Speed-ups are timed against the unpruned export in alternating rounds, at batch 1 and batch
64; nothing is estimated from MAC counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...converters import converter_for
from ...runtime.bundle.backends.onnx import session
from ..load.models import load_model
from ...runtime.timing import measure_latency, paired_speedup
from .prune import count, weight_sparsity


@dataclass
class StepResult:
    """One measured state of the model (step 0 is the original)."""

    step: int
    label: str
    params: int
    macs: int
    weight_sparsity: float
    onnx_bytes: int
    latency_b1_ms: float
    speedup_b1: float
    speedup_b64: float
    accuracy: float | None
    loss: list[float] = field(default_factory=list)



class Meter:
    """Measures a module as the board would run it: exported to ONNX, timed with onnxruntime."""

    def __init__(self, example: tuple[Any, ...], threads: int, work: Path) -> None:
        self.example = example
        self.threads = threads
        self.work = work
        self.base: tuple[Any, Any] | None = None

    def _session(self, module: Any, name: str) -> tuple[Path, Any, list[str]]:
        source = load_model(module, example={f"input_{i}": x.numpy() for i, x in enumerate(self.example)}
                            if len(self.example) > 1 else {"input": self.example[0].numpy()})
        path = self.work / f"{name}.onnx"
        converter_for("onnx", source.kind).export(source, path)
        timed = session(path, threads=self.threads)
        return path, timed, [i.name for i in timed.get_inputs()]

    def _feeds(self, names: list[str], batch: int) -> dict[str, np.ndarray]:
        return {n: np.repeat(x.numpy()[:1], batch, axis=0) for n, x in zip(names, self.example)}

    def latency_ms(self, module: Any) -> float:
        _, session, names = self._session(module, "trial")
        feeds = self._feeds(names, 1)
        return measure_latency(lambda: session.run(None, feeds), threads=self.threads, budget_s=0.5).p50_ms

    def measure(self, module: Any, step: int, label: str, accuracy: float | None) -> StepResult:
        macs, params = count(module, self.example[:1] if len(self.example) == 1 else self.example)
        path, session, names = self._session(module, f"step{step}")
        if self.base is None:
            self.base = (session, names)
        base, base_names = self.base
        speed = {}
        lat_b1 = None
        for batch in (1, 64):
            feeds, base_feeds = self._feeds(names, batch), self._feeds(base_names, batch)
            ratio, _, lat = paired_speedup(lambda: base.run(None, base_feeds), lambda: session.run(None, feeds),
                                           threads=self.threads, budget_s=1.5)
            speed[batch] = ratio
            lat_b1 = lat.p50_ms if batch == 1 else lat_b1
        return StepResult(step, label, params, macs, weight_sparsity(module), path.stat().st_size, lat_b1,
                          speed[1], speed[64], accuracy)
