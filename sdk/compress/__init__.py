"""``edgec compress``: prune, distill, fine-tune, and measure what the exported model really does.

Every step is measured on the artifact a board would run, not estimated from MAC counts:
the model is exported to ONNX and timed with onnxruntime on this host against the
unpruned export, in alternating rounds, at batch 1 and batch 64.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError, CalibrationError, ValidationError
from ..training import arrays_from, batches, fit
from .distill import Distiller
from .prune import check_ratio, count, prune_structured, prune_unstructured, resolve_layers, weight_sparsity


@dataclass(frozen=True)
class CompressConfig:
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
        seed: Seed for shuffling and initialisation.
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
    seed: int = 0

    def __post_init__(self) -> None:
        check_ratio(self.prune)
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


@dataclass
class CompressResult:
    """What ``compress`` wrote and measured."""

    model: Path
    report: dict[str, Any]
    steps: list[StepResult]


def compress(
    model: Any,
    *,
    data: Any,
    out: str | Path,
    eval_data: Any = None,
    teachers: Sequence[Any] = (),
    config: CompressConfig | None = None,
    weights: str | Path | None = None,
    teacher_weights: str | Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> CompressResult:
    """Prune and/or distill ``model``, fine-tune it on ``data`` and write ``out`` (a ``.pt2``).

    Args:
        model: ``pkg.module:factory`` (with ``weights``), an ``nn.Module`` or a ``.pt2``
            (structured pruning needs the module's code: a factory or module).
        data: Training data: ``.npz``/dict with inputs and ``labels``, ``(x, y)`` arrays, or
            an iterable of ``(x, y)`` batches.
        out: The compressed model's path (``.pt2``); the report is written beside it as
            ``<stem>.report.json``, ``<stem>.report.md`` and ``<stem>.png``.
        eval_data: Labelled held-out data for accuracy at every step.
        teachers: Models to distill from (same forms as ``model``).
        config: How to compress; ``options`` override its fields.
        force: Replace existing outputs.
        progress: Called with a line of text at each stage.

    Raises:
        ValidationError: Bad settings, an unknown layer, a teacher whose outputs differ.
        CalibrationError: Data that does not fit the model.
        BundleError: Outputs already exist (without ``force``).
    """
    from ..models import load_module

    cfg = replace(config or CompressConfig(), **options)
    say = progress or (lambda _: None)
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValidationError(f"--out {out} must be a .pt2 file (the compressed model, for `edgec convert`)")
    outputs = [out, *(out.with_name(out.stem + s) for s in (".report.json", ".report.md", ".png"))]
    existing = [p for p in outputs if p.exists()]
    if existing and not force:
        raise BundleError(f"{existing[0]} already exists: pass --force to replace it")

    student = load_module(model, weights=weights)
    if cfg.structured and cfg.prune > 0 and not any(type(m).__name__ in ("Conv2d", "Linear", "Conv1d")
                                                     for m in student.modules()):
        raise ValidationError("structured pruning needs the model's layers: pass pkg.module:factory --weights "
                              "w.safetensors (a .pt2 keeps only the traced graph)")
    resolve_layers(student, cfg.skip)
    teacher_models = [load_module(t, weights=teacher_weights if i == 0 else None, what="teacher")
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
        meter = _Meter(example, cfg.threads, work)
        student.eval()
        steps = [meter.measure(student, 0, "original", _accuracy(student, eval_arrays))]
        say(f"original: {steps[0].params:,} parameters, {steps[0].macs:,} MACs, "
            f"{_pct(steps[0].accuracy)} accuracy")
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
                say(f"step {k}/{cfg.steps}: fine-tuning {cfg.epochs} epoch(s)" + (" with distillation" if d else ""))
                history = fit(student, data, epochs=cfg.epochs, optimizer=cfg.optimizer, lr=cfg.lr,
                              batch_size=cfg.batch_size, loss=loss_fn, extra_params=extra,
                              after_step=(lambda: mask.apply(student)) if mask is not None else None, seed=cfg.seed + k)
            if d is not None:
                d.close()
            student.eval()
            label = (f"{'channels' if cfg.structured else 'weights'} −{share:.0%}" if target > 0 else "distilled")
            result = meter.measure(student, k, label, _accuracy(student, eval_arrays))
            result.loss = history.loss if history else []
            steps.append(result)
            say(f"step {k}: {label}: {result.params:,} parameters, {result.speedup_b1:.2f}x at batch 1, "
                f"{result.speedup_b64:.2f}x at batch 64, {_pct(result.accuracy)} accuracy")

        report = _report(cfg, steps, model, teachers)
        report["plot"] = outputs[3].name
        staged = [work / f"out{i}{p.suffix}" for i, p in enumerate(outputs)]
        _export_pt2(student, example, staged[0])
        staged[1].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        staged[2].write_text(_markdown(report), encoding="utf-8")
        _plot(steps, staged[3], report["title"])
        out.parent.mkdir(parents=True, exist_ok=True)
        for src, dst in zip(staged, outputs):  # all four were written: now move them into place
            shutil.move(str(src), str(dst))
    return CompressResult(out, report, steps)


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


def _resolve_target(student: Any, example: tuple[Any, ...], cfg: CompressConfig, meter: _Meter,
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


class _Meter:
    """Measures a module as the board would run it: exported to ONNX, timed with onnxruntime."""

    def __init__(self, example: tuple[Any, ...], threads: int, work: Path) -> None:
        self.example = example
        self.threads = threads
        self.work = work
        self.base: tuple[Any, Any] | None = None

    def _session(self, module: Any, name: str) -> tuple[Path, Any, list[str]]:
        import onnxruntime as ort

        from ...converters.onnx import CONVERTER
        from ..models import load_model

        source = load_model(module, example={f"input_{i}": x.numpy() for i, x in enumerate(self.example)}
                            if len(self.example) > 1 else {"input": self.example[0].numpy()})
        path = self.work / f"{name}.onnx"
        CONVERTER.export(source, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return path, session, [i.name for i in session.get_inputs()]

    def _feeds(self, names: list[str], batch: int) -> dict[str, np.ndarray]:
        return {n: np.repeat(x.numpy()[:1], batch, axis=0) for n, x in zip(names, self.example)}

    def latency_ms(self, module: Any) -> float:
        from ..evaluate import measure_latency

        _, session, names = self._session(module, "trial")
        feeds = self._feeds(names, 1)
        return measure_latency(lambda: session.run(None, feeds), threads=self.threads, budget_s=0.5).p50_ms

    def measure(self, module: Any, step: int, label: str, accuracy: float | None) -> StepResult:
        from ..evaluate import paired_speedup

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


def _export_pt2(module: Any, example: tuple[Any, ...], path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example))
    torch.export.save(program, str(path))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _report(cfg: CompressConfig, steps: list[StepResult], model: Any, teachers: Sequence[Any]) -> dict[str, Any]:
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

    return {
        "title": f"{name(model)} compressed" + (f", distilled from {', '.join(map(name, teachers))}" if teachers else ""),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
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
    }


def _markdown(report: dict[str, Any]) -> str:
    from ..report import human_bytes

    lines = [f"# edgec compress: {report['title']}", "", report["measured"] + ".", "",
             "| step | change | parameters | MACs | weight sparsity | ONNX size | latency b1 | speed-up b1 | "
             "speed-up b64 | accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['label']} | {s['params']:,} | {s['macs']:,} | {s['weight_sparsity']:.0%} | "
                     f"{human_bytes(s['onnx_bytes'])} | {s['latency_b1_ms']:.3f} ms | {s['speedup_b1']:.2f}x | "
                     f"{s['speedup_b64']:.2f}x | {_pct(s['accuracy'])} |")
    sm = report["summary"]
    lines += ["", "## Summary", "",
              f"- Parameters: {sm['params_vs_original']:.0%} of the original; ONNX file {sm['onnx_size_vs_original']:.0%}.",
              f"- Speed: {sm['speedup_b1']:.2f}x at batch 1, {sm['speedup_b64']:.2f}x at batch 64 (measured)."]
    if sm["accuracy_drop_points"] is not None:
        lines.append(f"- Accuracy: {-sm['accuracy_drop_points']:+.2f} points vs the original.")
    lines += [f"- Note: {n}" for n in report["notes"]]
    lines += ["", f"![accuracy vs sparsity and latency]({report.get('plot', 'plot.png')})", ""]
    return "\n".join(lines)


def _plot(steps: list[StepResult], path: Path, title: str) -> None:
    from ..plots import _pyplot

    plt = _pyplot()
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
