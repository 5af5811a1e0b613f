"""Run artifacts the way a board will: through the runtime's own feeding code, on held-out samples.

Before an artifact has a manifest (while it is a search candidate) :func:`open_artifact`
gives it one in memory, so every measurement goes through the same casts, int8 I/O and
backend settings the board uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...converters import converter_for
from ...converters.base import Samples, Source
from ...devices import DeviceProfile
from ...runtime.bundle.backends import BackendOptions, open_backend
from ...runtime.bundle.manifest import Manifest
from ...runtime.bundle.model import LoadedModel
from ...runtime.bundle.tensors import TensorSpec
from .fidelity import Fidelity, Reference, run_batched
from .task import TaskOptions
from ...runtime.timing import Latency, measure_latency

Specs = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


@dataclass(frozen=True)
class Measured:
    """One artifact measured on the held-out samples.

    Attributes:
        fidelity: Its outputs against the original's.
        size_bytes: File size.
        run_one: Runs one held-out sample (for timing); ``None`` when not kept open.
        latency: Single-sample latency, once timed.
        speedup: Speed-up over fp32, timed in alternating rounds with it.
    """

    fidelity: Fidelity
    size_bytes: int
    run_one: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    latency: Latency | None = None
    speedup: float | None = None
    notes: tuple[str, ...] = ()  # what the runtime changed to run it (an onnxruntime option dropped)
    model: LoadedModel | None = field(default=None, repr=False, compare=False)  # the artifact, open


MeasureFn = Callable[..., Measured]


def open_artifact(path: Path, *, fmt: str, precision: str, source: Source, profile: DeviceProfile, threads: int,
                  specs: Specs | None = None, weight_bits: int | None = None) -> LoadedModel:
    """Open an artifact through the runtime's own feeding code, before it has a manifest.

    Args:
        path: The model file.
        fmt, precision: What it is.
        source: The original model (names the artifact's inputs and outputs).
        profile: The target board (execution providers).
        threads: Threads to run it with on this host.
        specs: Its inputs and outputs, when already known.
        weight_bits: 7 for int8 weights of reduced range (see :class:`~edgec.runtime.bundle.manifest.Manifest`).
    """
    inputs, outputs = specs or converter_for(fmt).io_specs(path, source)
    manifest = Manifest(format=fmt, precision=precision, model_file=path.name, inputs=inputs, outputs=outputs,
                        device=profile.to_dict(), files={}, weight_bits=weight_bits)
    options = BackendOptions(threads=threads, providers=profile.execution_providers, exact_int8=weight_bits != 7)
    return LoadedModel(path.parent, manifest, open_backend(fmt, path, options), 0.0)


def outputs_of(model: LoadedModel) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """``model.predict`` returning the outputs as a list, in the model's order."""
    return lambda feeds: list(model.predict(feeds).values())


def reference_outputs(source: Source, holdout: Samples, task: TaskOptions | None = None) -> Reference:
    """The original model's outputs on the held-out samples, with its task resolved from them."""
    # A source traced with a fixed batch of 1 takes one sample at a time.
    ref_batch = 1 if any(t.shape[:1] == (1,) for t in source.inputs) else holdout.batch_size(most=64)
    outputs = run_batched(source.run, holdout.batches(ref_batch))
    return Reference(outputs, [t.name for t in source.outputs], getattr(holdout, "labels", None), task)


def make_measure(fmt: str, source: Source, profile: DeviceProfile, threads: int, holdout: Any,
                 reference: Reference) -> MeasureFn:
    """``measure(path, precision, *, limit=None, weight_bits=None) -> Measured``: an artifact's
    fidelity on the held-out samples (the first ``limit`` of them), with a hook to time it on one."""
    one = next(holdout.samples())

    def measure(path: Path, precision: str, *, limit: int | None = None, weight_bits: int | None = None) -> Measured:
        model = open_artifact(path, fmt=fmt, precision=precision, source=source, profile=profile, threads=threads,
                              weight_bits=weight_bits)
        part = holdout if limit is None else holdout.take(slice(0, limit))
        ref = reference if limit is None else reference.head(len(part))
        fid = ref.compare(run_batched(outputs_of(model), part.batches(part.batch_size(most=64))))
        return Measured(fid, path.stat().st_size, run_one=lambda: model.predict(one),
                        notes=tuple(getattr(model.backend, "notes", ())), model=model)

    return measure


def source_latency(source: Source, one: dict[str, np.ndarray], threads: int, budget_s: float) -> Latency:
    """The original model's single-sample latency on this host, with ``threads`` threads."""
    if source.kind != "torch":
        return measure_latency(lambda: source.run(one), threads=threads, budget_s=budget_s)
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_latency(lambda: source.run(one), threads=threads, budget_s=budget_s)
    finally:
        torch.set_num_threads(saved)
