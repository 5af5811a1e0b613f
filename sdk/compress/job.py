"""``edgec compress``: prune, distill, fine-tune, and measure what the exported model really does.

Every step is measured on the artifact a board would run, not estimated from MAC counts:
the model is exported to ONNX and timed with onnxruntime on this host against the
unpruned export, in alternating rounds, at batch 1 and batch 64.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError, CalibrationError, ValidationError
from ..bundle.writer import output_files, write_report
from ..load.models import load_module
from ..progress import SILENT, Options, Progress
from ..training import arrays_from, batches, check_device, device_name, fit, train_device
from .distill import Distiller
from .meter import Meter, StepResult
from .prune import check_ratio, count, prune_structured, prune_unstructured, resolve_layers
from .report import build_report, percent, plot


@dataclass(frozen=True)
class CompressConfig(Options):
    """How to compress.

    Attributes:
        prune: Share of channels (structured) or weights (unstructured) to remove, in [0, 1).
        structured: Remove whole channels (really smaller and faster) instead of zeroing weights.
        scope: Unstructured only: ``global`` ranks all weights together, ``layer`` each layer.
        steps: Progressive pruning: reach the target in this many steps, fine-tuning between.
        epochs: Fine-tuning epochs after each step.
        optimizer, lr, batch_size: For fine-tuning.
        skip: Layers (module paths) never pruned.
        target_macs: Structured: keep at most this share of the original MACs (instead of ``prune``).
        target_latency_ms: Structured: prune until the exported ONNX runs a sample within this
            many milliseconds on this host (instead of ``prune``).
        temperature, alpha: Logit distillation settings.
        features: ``{student layer: teacher layer}`` feature distillation pairs.
        beta: Weight of feature distillation.
        progressive_distill: At each step, distill from the previous step's model as well.
        threads: Threads for latency measurements.
        train_device: Where fine-tuning runs: ``auto`` (CUDA when torch sees a GPU), ``cpu``, ``cuda`` or
            ``cuda:N``; the student, the teachers and each batch go there, and the model comes back to the
            CPU to be measured and exported, so the export is the same wherever it trained.
        seed: Seed for shuffling and initialisation.
        weights: Weights (``.safetensors``) for a ``pkg.module:factory`` model.
        teacher_weights: Weights for a ``pkg.module:factory`` teacher (the first).
        force: Replace existing outputs.
    """

    prune: float = 0.5
    structured: bool = True
    scope: str = "global"
    steps: int = 1
    epochs: int = 3
    optimizer: str = "adam"
    lr: float = 3e-3
    batch_size: int = 64
    skip: tuple[str, ...] = ()
    target_macs: float | None = None
    target_latency_ms: float | None = None
    temperature: float = 4.0
    alpha: float = 0.7
    features: dict[str, str] = field(default_factory=dict)
    beta: float = 1.0
    progressive_distill: bool = False
    threads: int = 2
    train_device: str = "auto"
    seed: int = 0
    weights: Path | None = None
    teacher_weights: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        check_ratio(self.prune)
        check_device(self.train_device)
        if self.steps < 1:
            raise ValidationError(f"steps must be at least 1, got {self.steps}")
        if self.epochs < 0:
            raise ValidationError(f"epochs must be 0 or more, got {self.epochs}")
        if self.scope not in ("global", "layer"):
            raise ValidationError(f"scope must be global or layer, got {self.scope!r}")
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise ValidationError(f"target MACs is the share of the original to keep, in (0, 1); got {self.target_macs}")
        if self.target_latency_ms is not None and self.target_latency_ms <= 0:
            raise ValidationError("target latency must be positive")
        if (self.target_macs or self.target_latency_ms) and not self.structured:
            raise ValidationError("MAC and latency targets need --structured: zeroed weights change neither")


@dataclass
class CompressResult:
    """What ``compress`` wrote and measured."""

    model: Path
    report: dict[str, Any]
    steps: list[StepResult]


def compress(model: Any, config: CompressConfig | None = None, *, data: Any, out: str | Path, eval_data: Any = None,
             teachers: Sequence[Any] = (), progress: Progress | None = None, **options: Any) -> CompressResult:
    """Prune and/or distill ``model``, fine-tune it on ``data`` and write ``out`` (a ``.pt2``).

    Args:
        model: ``pkg.module:factory`` (with ``weights``), an ``nn.Module`` or a ``.pt2``
            (structured pruning needs the module's code: a factory or module).
        config: How to compress; ``options`` (any :class:`CompressConfig` field) override it.
        data: Training data: ``.npz``/dict with inputs and ``labels``, ``(x, y)`` arrays, or
            an iterable of ``(x, y)`` batches.
        out: The compressed model's path (``.pt2``); the report is written beside it as
            ``<stem>.report.json``, ``<stem>.report.md`` and ``<stem>.png``.
        eval_data: Labelled held-out data for accuracy at every step.
        teachers: Models to distill from (same forms as ``model``).
        progress: Where each step's measured result (``note``) and fine-tuning epochs are reported.

    Raises:
        ValidationError: Bad settings, an unknown layer, a teacher whose outputs differ.
        CalibrationError: Data that does not fit the model.
        BundleError: Outputs already exist (without ``force``).

    Example:
        >>> result = compress("pkg.nets:cnn", CompressConfig(prune=0.5), data="train.npz", out="small.pt2",
        ...                   weights="cnn.safetensors")
    """
    cfg = (config or CompressConfig()).with_options(options)
    progress = progress or SILENT
    say = progress.note
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValidationError(f"--out {out} must be a .pt2 file (the compressed model, for `edgec convert`)")
    outputs = [out, *(out.with_name(out.stem + s) for s in (".report.json", ".report.md", ".png"))]
    existing = [p for p in outputs if p.exists()]
    if existing and not cfg.force:
        raise BundleError(f"{existing[0]} already exists: pass --force to replace it")

    device = train_device(cfg.train_device)  # a GPU asked for and absent fails here, before any work
    student = load_module(model, weights=cfg.weights)
    if cfg.structured and cfg.prune > 0 and not any(type(m).__name__ in ("Conv2d", "Linear", "Conv1d")
                                                     for m in student.modules()):
        raise ValidationError("structured pruning needs the model's layers: pass pkg.module:factory --weights "
                              "w.safetensors (a .pt2 keeps only the traced graph)")
    resolve_layers(student, cfg.skip)
    teacher_models = [load_module(t, weights=cfg.teacher_weights if i == 0 else None, what="teacher")
                      for i, t in enumerate(teachers)]
    first = next(batches(data, batch_size=cfg.batch_size, shuffle=False)(0))
    example = tuple(x[:2] for x in first[0])
    _check_fits(student, example, first[1], "student")
    eval_arrays = arrays_from(eval_data) if eval_data is not None else None
    if eval_data is not None and eval_arrays is None:
        raise ValidationError("eval data must be an .npz, a dict or (x, y) arrays with labels")
    if eval_arrays is not None:
        want = [tuple(x.shape[1:]) for x in example]
        got = [tuple(x.shape[1:]) for x in eval_arrays[0]]
        if got != want:
            raise CalibrationError(f"eval data has samples of shape {', '.join(str(list(g)) for g in got)} but the "
                                   f"training data {', '.join(str(list(w)) for w in want)}: preprocess both alike")
    if teacher_models:  # check teachers and feature layers now, before any training
        Distiller(student, teacher_models, example, temperature=cfg.temperature, alpha=cfg.alpha,
                  features=cfg.features, beta=cfg.beta).close()
    elif cfg.features:
        raise ValidationError("feature distillation needs a teacher: pass --distill-from")

    with tempfile.TemporaryDirectory(prefix="edgec-compress-") as tmp:
        work = Path(tmp)
        meter = Meter(example, cfg.threads, work)
        student.eval()
        steps = [meter.measure(student, 0, "original", _accuracy(student, eval_arrays))]
        say(f"original: {steps[0].params:,} parameters, {steps[0].macs:,} MACs, "
            f"{percent(steps[0].accuracy)} accuracy")
        target = _resolve_target(student, example, cfg, meter, say)
        mask = None
        previous = None
        for k in range(1, cfg.steps + 1):
            share = target * k / cfg.steps
            if cfg.progressive_distill:
                previous = copy.deepcopy(student).eval()
            if target > 0 and cfg.structured:
                done_share = target * (k - 1) / cfg.steps
                ratio = 1 - (1 - share) / (1 - done_share)
                prune_structured(student, example, ratio, skip=cfg.skip)
            elif target > 0:
                mask = prune_unstructured(student, share, scope=cfg.scope, skip=cfg.skip, previous=mask)
            loss_fn = None
            extra: list[Any] = []
            if teacher_models or previous is not None:
                d = Distiller(student, teacher_models + ([previous] if previous is not None else []), example,
                              temperature=cfg.temperature, alpha=cfg.alpha, features=cfg.features, beta=cfg.beta)
                loss_fn, extra = d.loss, d.parameters()
            else:
                d = None
            history = None
            if cfg.epochs and (target > 0 or d is not None):
                say(f"step {k}/{cfg.steps}: fine-tuning {cfg.epochs} epoch(s) on {device_name(device)}"
                    + (" with distillation" if d else ""))
                moved = [student, *teacher_models, *([previous] if previous is not None else []),
                         *([d.adapters] if d is not None else [])]
                for module in moved:  # the teachers run beside the student, on the same device
                    module.to(device)
                history = fit(student, data, epochs=cfg.epochs, optimizer=cfg.optimizer, lr=cfg.lr,
                              batch_size=cfg.batch_size, loss=loss_fn, extra_params=extra,
                              after_step=(lambda: mask.apply(student)) if mask is not None else None, seed=cfg.seed + k,
                              progress=lambda done, total, _: progress.advance(done, total, "epochs"), device=device)
                for module in moved:
                    module.cpu()
            if d is not None:
                d.close()
            student.eval()
            label = (f"{'channels' if cfg.structured else 'weights'} −{share:.0%}" if target > 0 else "distilled")
            result = meter.measure(student, k, label, _accuracy(student, eval_arrays))
            result.loss = history.loss if history else []
            steps.append(result)
            say(f"step {k}: {label}: {result.params:,} parameters, {result.speedup_b1:.2f}x at batch 1, "
                f"{result.speedup_b64:.2f}x at batch 64, {percent(result.accuracy)} accuracy")

        report = build_report(cfg, steps, model, teachers, plot_name=outputs[3].name, trained_on=device_name(device))
    with output_files(outputs, force=cfg.force) as stage:
        _export_pt2(student, example, stage / out.name)
        write_report(stage, f"{out.stem}.report", report)
        plot(steps, stage / outputs[3].name, report.data["title"])
    return CompressResult(out, report.data, steps)


def _check_fits(model: Any, example: tuple[Any, ...], labels: Any, who: str) -> None:
    import torch

    try:
        with torch.no_grad():
            out = model.eval()(*example)
    except Exception as exc:
        shapes = ", ".join(str(list(x.shape)) for x in example)
        raise CalibrationError(f"the training data does not fit the {who}: inputs of shape {shapes} "
                               f"fail with {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if labels.numel() and (int(labels.max()) >= logits.shape[-1] or int(labels.min()) < 0):
        raise CalibrationError(f"labels go up to {int(labels.max())} but the {who} outputs {logits.shape[-1]} classes")


def _accuracy(model: Any, arrays: tuple[tuple[np.ndarray, ...], np.ndarray] | None) -> float | None:
    import torch

    if arrays is None:
        return None
    xs, labels = arrays
    with torch.no_grad():
        preds = [model(*(torch.from_numpy(np.ascontiguousarray(x[i:i + 256])) for x in xs)) for i in range(0, len(labels), 256)]
    preds = [p[0] if isinstance(p, (tuple, list)) else p for p in preds]
    return float(np.mean(torch.cat(preds).argmax(1).numpy() == labels))


def _resolve_target(student: Any, example: tuple[Any, ...], cfg: CompressConfig, meter: Meter,
                    say: Callable[[str], None]) -> float:
    """The channel share to remove: ``prune``, or found by bisection for a MAC or latency target."""
    if cfg.target_macs is None and cfg.target_latency_ms is None:
        return cfg.prune
    base_macs = count(student, example)[0]

    def meets(ratio: float) -> bool:
        trial = prune_structured(copy.deepcopy(student), example, ratio, skip=cfg.skip)
        if cfg.target_macs is not None:
            return count(trial, example)[0] <= cfg.target_macs * base_macs
        return meter.latency_ms(trial) <= cfg.target_latency_ms

    lo, hi = 0.0, 0.95
    if not meets(hi):
        raise ValidationError("the target cannot be reached even removing 95% of the channels: relax it")
    for _ in range(6):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    say(f"target reached by removing {hi:.0%} of the channels")
    return hi


def _export_pt2(module: Any, example: tuple[Any, ...], path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example))
    torch.export.save(program, str(path))


