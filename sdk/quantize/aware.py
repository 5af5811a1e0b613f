"""Quantization-aware training with PyTorch 2 export (PT2E).

When post-training int8 cannot meet the budget, fine-tuning with fake quantization lets the
weights adapt to int8 and learns the activation ranges. The trained graph is a model of its
own kind (``qat``), exported through the exporter table like any other
(:mod:`edgec.converters.exporters`): ONNX with QuantizeLinear/DequantizeLinear pairs
(onnxruntime and TensorRT run them as int8) and full-int8 TFLite (litert-torch), both from
the same learned scales.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ..._quiet import quiet
from ...converters import converter_for
from ...devices import builtin_profiles
from ...errors import ValidationError
from ...formats import FORMATS
from ...runtime.bundle.tensors import TensorSpec
from ..bundle.writer import output, write_report
from ..report.page import Report
from ..load.models import load_module
from ..progress import SILENT, Options, Progress
from ..training import OPTIMIZERS, History, arrays_from, batches, check_device, device_name, fit, train_device
from ..verify.artifact import open_artifact

# Training samples run through the observers to set initial int8 ranges.
CALIBRATION_SAMPLES = 512
QAT_FORMATS = ("onnx", "tflite")


@dataclass(frozen=True)
class QATConfig(Options):
    """How to train with fake quantization, and what to export.

    Attributes:
        epochs, optimizer, lr, batch_size, seed: As for :func:`edgec.sdk.training.fit`.
        formats: The artifacts to write: ``onnx`` (QDQ) and/or ``tflite`` (full int8).
        weights: Weights (``.safetensors``) for a ``pkg.module:factory`` model.
        force: Replace the output folder if it exists.
        train_device: Where the fake-quantized graph trains: ``auto`` (CUDA when torch sees a GPU), ``cpu``,
            ``cuda`` or ``cuda:N``. Calibration, evaluation and export run on the CPU, so the artifacts are
            the same wherever it trained.
    """

    epochs: int = 3
    optimizer: str = "sgd"
    lr: float = 1e-3
    batch_size: int = 64
    formats: tuple[str, ...] = QAT_FORMATS
    weights: Path | None = None
    force: bool = False
    seed: int = 0
    train_device: str = "auto"

    def __post_init__(self) -> None:
        check_device(self.train_device)
        unknown = [f for f in self.formats if f not in QAT_FORMATS]
        if unknown or not self.formats:
            raise ValidationError(f"QAT formats must be {' and/or '.join(QAT_FORMATS)}, got "
                                  f"{', '.join(self.formats) or 'none'}")
        if self.epochs < 1:
            raise ValidationError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValidationError(f"learning rate must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValidationError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.batch_size < 1:
            raise ValidationError(f"batch size must be at least 1, got {self.batch_size}")

    def _coerce(self, name: str, value: Any) -> Any:
        return tuple(value.split(",")) if name == "formats" and isinstance(value, str) else value


@dataclass
class QATResult:
    """What quantization-aware training produced.

    Attributes:
        out: The folder holding the artifacts, ``qat.json`` and ``qat.md``.
        artifacts: The int8 model written for each format (``model.qat.onnx``, ``model.qat.tflite``).
        scales: Learned activation scale of each fake-quantize node, by node name.
        history: Training loss per epoch.
        accuracy: Accuracy on ``eval_data``: the fake-quantized model before and after
            training (``before``, ``after``), and each exported artifact run through the
            edgec runtime (by format).
    """

    out: Path
    artifacts: dict[str, Path]
    scales: dict[str, float]
    history: History
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def onnx(self) -> Path | None:
        return self.artifacts.get("onnx")

    @property
    def tflite(self) -> Path | None:
        return self.artifacts.get("tflite")


@dataclass
class QATSource:
    """A graph trained with fake quantization: a model of kind ``qat`` for the exporter table."""

    prepared: Any  # the PT2E-prepared graph module, in eval mode
    quantizer: Any  # the PT2E quantizer it was prepared with (litert-torch lowers by it)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    label: str
    kind: str = "qat"
    size_bytes: int = 0
    examples: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            out = self.prepared(*(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    def patterns(self) -> contextlib.AbstractContextManager[None]:
        return function_patterns()


def qat(model: Any, config: QATConfig | None = None, *, data: Any, eval_data: Any = None,
        out: str | Path | None = None, progress: Progress | None = None, **options: Any) -> QATResult:
    """Fine-tune ``model`` with int8 fake quantization and export what it learned.

    Args:
        model: A trained float model: ``pkg.module:factory`` (with ``weights``), an ``nn.Module`` or a ``.pt2``.
        config: How to train and what to export; ``options`` (any :class:`QATConfig` field) override it.
        data: Training data: ``.npz``/dict with inputs and ``labels``, ``(x, y)`` arrays, or an
            iterable of ``(x, y)`` batches.
        eval_data: ``(x, y)`` arrays or an ``.npz``/dict with labels: accuracy before and after
            training, and of each artifact as the runtime runs it.
        out: Folder to write; default ``build/qat``.
        progress: Where stages, epochs and accuracies are reported; default silent.

    Raises:
        ValidationError: Bad settings.
        CalibrationError: Data without labels, or that does not fit the model.
        ConversionError: An export failed.
        BundleError: ``out`` exists (without ``force``).

    Example:
        >>> result = qat("pkg.nets:cnn", QATConfig(epochs=2), weights="cnn.safetensors", data="train.npz",
        ...              eval_data="test.npz", out="build/qat")
        >>> result.accuracy
        {'before': 0.982, 'after': 0.991, 'onnx': 0.991, 'tflite': 0.989}
    """
    cfg = (config or QATConfig()).with_options(options)
    progress = progress or SILENT
    torch = need("torch", extra="sdk", purpose="for quantization-aware training")
    device = train_device(cfg.train_device)  # a GPU asked for and absent fails here, before the slow imports
    pt2e = need("torchao.quantization.pt2e.quantize_pt2e", extra="sdk", purpose="for quantization-aware training")
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    with quiet():
        quantizers = need("litert_torch.quantize.pt2e_quantizer", extra="sdk",
                          purpose="for quantization-aware training")
    module = load_module(model, weights=cfg.weights)
    args = _example_args(data, cfg.batch_size)
    evaluate = _evaluator(eval_data)
    with output(Path(out or Path("build") / "qat"), force=cfg.force) as stage:
        with progress.stage("Preparing the graph for fake quantization"), function_patterns():
            batch = torch.export.Dim("batch", min=1, max=4096)
            graph = torch.export.export(module.eval(), args, dynamic_shapes=tuple({0: batch} for _ in args)).module()
            # Symmetric int8, per-channel weights: what XNNPACK (TFLite), onnxruntime and TensorRT all run.
            quantizer = quantizers.PT2EQuantizer().set_global(
                quantizers.get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
            prepared = pt2e.prepare_qat_pt2e(graph, quantizer)
        accuracy: dict[str, float] = {}
        with progress.stage(f"Calibrating int8 ranges on up to {CALIBRATION_SAMPLES} training samples"):
            # A few training batches through the observers, with BatchNorm in eval mode so its
            # running statistics stay those of the trained model.
            move_exported_model_to_eval(prepared)
            with torch.no_grad():
                for i, (xs, _) in enumerate(batches(data, batch_size=cfg.batch_size, seed=cfg.seed)(0)):
                    if i * cfg.batch_size >= CALIBRATION_SAMPLES:
                        break
                    prepared(*xs)
            if evaluate:
                accuracy["before"] = evaluate(prepared)
        with progress.stage(f"Training with fake quantization ({cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}) "
                            f"on {device_name(device)}"):
            prepared.to(device)
            history = fit(prepared, data, epochs=cfg.epochs, optimizer=cfg.optimizer, lr=cfg.lr,
                          batch_size=cfg.batch_size, train_mode=move_exported_model_to_train,
                          eval_mode=move_exported_model_to_eval, seed=cfg.seed,
                          progress=lambda done, total, _: progress.advance(done, total, "epochs"), device=device)
            prepared.cpu()
            move_exported_model_to_eval(prepared)
            for fake_quantize in prepared.modules():  # the learned ranges are final: running it no longer moves them
                if hasattr(fake_quantize, "disable_observer"):
                    fake_quantize.disable_observer()
            if evaluate:
                accuracy["after"] = evaluate(prepared)
        scales = {name: float(mod.scale.detach().reshape(-1)[0]) for name, mod in prepared.named_modules()
                  if name.startswith("activation_post_process") and hasattr(mod, "scale")}
        source = _source(prepared, quantizer, args, model)
        artifacts = {}
        for fmt in cfg.formats:
            path = stage / f"model.qat{FORMATS[fmt].suffix}"
            with progress.stage(f"Exporting {fmt} int8"):
                converter_for(fmt, source.kind).export(source, path)
            artifacts[fmt] = path
            if evaluate:
                with progress.stage(f"Measuring the {fmt} artifact through the edgec runtime"):
                    accuracy[fmt] = _artifact_accuracy(fmt, path, source, eval_data)
        report = {"model": source.label, "trained_on": device_name(device), "epochs": cfg.epochs,
                  "optimizer": cfg.optimizer, "lr": cfg.lr,
                  "loss": history.loss, "accuracy": accuracy, "scales": scales,
                  "artifacts": [p.name for p in artifacts.values()]}
        write_report(stage, "qat", _page(report))
    final = Path(out or Path("build") / "qat").resolve()
    return QATResult(final, {f: final / p.name for f, p in artifacts.items()}, scales, history, accuracy)


def _source(prepared: Any, quantizer: Any, args: tuple[Any, ...], model: Any) -> QATSource:
    import torch

    names = [f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))]
    with torch.no_grad():
        out = prepared(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    inputs = tuple(TensorSpec(n, (None, *a.shape[1:]), str(a.dtype).replace("torch.", "")) for n, a in zip(names, args))
    outputs = tuple(TensorSpec("output" if len(outs) == 1 else f"output_{i}", (None, *o.shape[1:]),
                               str(o.dtype).replace("torch.", "")) for i, o in enumerate(outs))
    label = model if isinstance(model, str) else Path(model).name if isinstance(model, Path) else type(model).__name__
    return QATSource(prepared, quantizer, inputs, outputs, f"{label} (QAT)")


def _page(report: dict[str, Any]) -> Report:
    acc = report["accuracy"]
    page = Report(f"edgec QAT: {report['model']}", report, lead=(
        f"{report['epochs']} epoch(s) on {report.get('trained_on', 'cpu')}, {report['optimizer']}, "
        f"lr {report['lr']:g}; "
        f"loss per epoch {', '.join(f'{x:.4f}' for x in report['loss'])}.",))
    names = {"before": "fake-quantized, before training", "after": "fake-quantized, after training"}
    if acc:
        page.add("Accuracy", ["| model | accuracy |", "|---|---|",
                              *(f"| {names.get(k, f'{k} artifact (edgec runtime)')} | {100 * v:.2f}% |"
                                for k, v in acc.items())])
    return page.add("Artifacts", [f"- {name}" for name in report["artifacts"]] + [
        f"- qat.json: {len(report['scales'])} learned activation scales"])


def _example_args(train_data: Any, batch_size: int) -> tuple[Any, ...]:
    """Two training samples per input, to trace the model with."""
    import torch

    arrays = arrays_from(train_data)
    if arrays is None:
        x, _ = next(iter(batches(train_data, batch_size=batch_size, shuffle=False)(0)))
        return tuple(v[:2] for v in x)
    return tuple(torch.as_tensor(np.repeat(np.asarray(v)[:1], 2, axis=0)) for v in arrays[0])


def _evaluator(eval_data: Any) -> Callable[[Any], float] | None:
    if eval_data is None:
        return None
    import torch

    arrays = arrays_from(eval_data)
    if arrays is None:
        raise ValidationError("eval_data must be an .npz, a dict or (x, y) arrays")
    xs, labels = arrays

    def evaluate(module: Any) -> float:
        with torch.no_grad():
            preds = [module(*(torch.from_numpy(x[i:i + 256]) for x in xs)).argmax(1).numpy()
                     for i in range(0, len(labels), 256)]
        return float(np.mean(np.concatenate(preds) == labels))

    return evaluate


def _artifact_accuracy(fmt: str, path: Path, source: QATSource, eval_data: Any) -> float:
    """Accuracy of an exported artifact, fed through the runtime's own code (int8 I/O included)."""
    # A CPU board with float I/O that runs this format: the artifact as any such board runs it.
    profile = next(p for p in builtin_profiles().values() if p.format == fmt and p.accelerator == "none"
                   and not p.int8_io)
    model = open_artifact(path, fmt=fmt, precision="int8", source=source, profile=profile, threads=1)
    xs, labels = arrays_from(eval_data)
    scores = next(iter(model.predict(dict(zip((t.name for t in source.inputs), xs))).values()))
    return float(np.mean(scores.argmax(1) == labels))


@contextlib.contextmanager
def function_patterns() -> Iterator[None]:
    """Let PT2E's pattern matchers run on this torch, for the block.

    torchao builds its conv/BN and operator patterns by ``torch.export``-ing plain functions,
    which torch 2.13 refuses (it takes modules only). Wrapping each pattern function in a
    module exports the same graph; the helper is replaced where torchao and litert-torch
    imported it, and put back after.
    """
    import importlib

    import torch

    names = ("torchao.quantization.pt2e.utils", "torchao.quantization.pt2e.qat_utils",
             "litert_torch.quantize.pt2e_quantizer_utils")
    with quiet():
        modules = [m for m in (importlib.import_module(n) for n in names)
                   if hasattr(m, "_get_aten_graph_module_for_pattern")]
    originals = [m._get_aten_graph_module_for_pattern for m in modules]
    original = originals[0]

    def wrapped(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        if not isinstance(pattern, torch.nn.Module):
            function = pattern

            class Pattern(torch.nn.Module):
                def forward(self, *a: Any, **k: Any) -> Any:
                    return function(*a, **k)

            pattern = Pattern()
        return original(pattern, example_inputs, is_cuda, **kwargs)

    for module in modules:
        module._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        for module, saved in zip(modules, originals):
            module._get_aten_graph_module_for_pattern = saved
