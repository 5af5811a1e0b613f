"""Quantization-aware training with PyTorch 2 export (PT2E).

When post-training int8 cannot meet the budget, fine-tuning with fake quantization lets the
weights adapt to int8 and learns the activation ranges. The trained graph is exported
twice from the same learned scales: ONNX with QuantizeLinear/DequantizeLinear pairs
(onnxruntime and TensorRT run them as int8) and a full-int8 TFLite model (litert-torch).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ..._quiet import quiet
from ...devices import builtin_profiles
from ...errors import ConversionError, ValidationError, first_line
from ...runtime.bundle.tensors import TensorSpec
from ..training import History, arrays_from, batches, fit
from ..verify.artifact import open_artifact

# Training samples run through the observers to set initial int8 ranges.
CALIBRATION_SAMPLES = 512


@dataclass
class QATResult:
    """What quantization-aware training produced.

    Attributes:
        onnx: ONNX QDQ model (int8 weights, learned activation scales), if asked for.
        tflite: Full-int8 TFLite model, if asked for.
        scales: Learned activation scale of each fake-quantize node, by node name.
        history: Training loss per epoch and the callback's results.
        accuracy: Accuracy on ``eval_data``: the fake-quantized model before and after
            training (``before``, ``after``), and each exported artifact run through the
            edgec runtime (``onnx``, ``tflite``).
    """

    onnx: Path | None
    tflite: Path | None
    scales: dict[str, float]
    history: History
    accuracy: dict[str, float] = field(default_factory=dict)


def qat(
    model: Any,
    train_data: Any,
    *,
    out: str | Path,
    example: Any = None,
    eval_data: Any = None,
    epochs: int = 3,
    optimizer: str = "sgd",
    lr: float = 1e-3,
    batch_size: int = 64,
    formats: tuple[str, ...] = ("onnx", "tflite"),
    callback: Callable[[int, Any], Any] | None = None,
    seed: int = 0,
) -> QATResult:
    """Fine-tune ``model`` with int8 fake quantization and export what it learned.

    Args:
        model: A trained ``torch.nn.Module`` (in float).
        train_data: ``.npz``/dict with inputs and ``labels``, ``(x, y)`` arrays, or an iterable
            of ``(x, y)`` batches.
        out: Folder for ``model.qat.onnx``, ``model.qat.tflite`` and ``qat.json``.
        example: One input array (or tuple of arrays) to trace with; default the first
            training batch.
        eval_data: ``(x, y)`` arrays or an ``.npz``/dict with labels: accuracy of the
            fake-quantized model before and after training.
        epochs, optimizer, lr, batch_size, callback, seed: As for :func:`edgec.sdk.training.fit`.
        formats: Which artifacts to write (``onnx``, ``tflite``).

    Returns:
        The artifacts, the learned scales and the measured accuracies.

    Example:
        >>> result = qat(model, "train.npz", out="build/qat", eval_data="test.npz", epochs=2)
        >>> result.accuracy
        {'before': 0.982, 'after': 0.991}
    """
    torch = need("torch", extra="sdk", purpose="for quantization-aware training")
    pt2e = need("torchao.quantization.pt2e.quantize_pt2e", extra="sdk", purpose="for quantization-aware training")
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    with quiet():
        quantizers = need("litert_torch.quantize.pt2e_quantizer", extra="sdk",
                          purpose="for quantization-aware training")
    unknown = sorted(set(formats) - {"onnx", "tflite"})
    if unknown or not formats:
        raise ValidationError(f"formats must be onnx and/or tflite, got {', '.join(formats) or 'none'}")
    _allow_function_patterns()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    args = _example_args(example, train_data, batch_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(model.eval(), args, dynamic_shapes=tuple({0: batch} for _ in args)).module()
    # Symmetric int8, per-channel weights: what XNNPACK (TFLite), onnxruntime and TensorRT all run.
    quantizer = quantizers.PT2EQuantizer().set_global(
        quantizers.get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    prepared = pt2e.prepare_qat_pt2e(graph, quantizer)

    evaluate = _evaluator(eval_data)
    accuracy: dict[str, float] = {}
    # Start from calibrated ranges: a few training batches through the observers, with
    # BatchNorm in eval mode so its running statistics stay those of the trained model.
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for i, (xs, _) in enumerate(batches(train_data, batch_size=batch_size, seed=seed)(0)):
            if i * batch_size >= CALIBRATION_SAMPLES:
                break
            prepared(*xs)
    if evaluate:
        accuracy["before"] = evaluate(prepared)
    history = fit(prepared, train_data, epochs=epochs, optimizer=optimizer, lr=lr, batch_size=batch_size,
                  callback=callback, train_mode=move_exported_model_to_train, eval_mode=move_exported_model_to_eval,
                  seed=seed)
    move_exported_model_to_eval(prepared)
    if evaluate:
        accuracy["after"] = evaluate(prepared)
    scales = {name: float(mod.scale.detach().reshape(-1)[0]) for name, mod in prepared.named_modules()
              if name.startswith("activation_post_process") and hasattr(mod, "scale")}

    onnx_path = tflite_path = None
    if "onnx" in formats:
        onnx_path = out / "model.qat.onnx"
        # Folded: weights stored as int8 with their scales, activations as Q/DQ pairs.
        converted = pt2e.convert_pt2e(copy.deepcopy(prepared), fold_quantize=True)
        program = torch.export.export(converted, args, dynamic_shapes=tuple({0: batch} for _ in args))
        try:
            with quiet():
                torch.onnx.export(program, args, str(onnx_path), dynamo=True, optimize=True,
                                  input_names=[f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))],
                                  output_names=["output"], external_data=False)
        except Exception as exc:
            raise ConversionError(f"exporting the QAT model to ONNX failed: {first_line(exc)}") from None
    if "tflite" in formats:
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig

        tflite_path = out / "model.qat.tflite"
        # litert-torch lowers the unfolded quantize/dequantize pairs to int8 TFLite kernels.
        converted = pt2e.convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)
        try:
            with quiet():
                edge = litert_torch.convert(converted, tuple(a[:1] for a in args),
                                            quant_config=QuantConfig(pt2e_quantizer=quantizer))
                edge.export(str(tflite_path))
        except Exception as exc:
            raise ConversionError(f"converting the QAT model to TFLite failed: {first_line(exc)}") from None
    if evaluate:
        for fmt, path in (("onnx", onnx_path), ("tflite", tflite_path)):
            if path is not None:
                accuracy[fmt] = _artifact_accuracy(fmt, path, args, eval_data)
    (out / "qat.json").write_text(json.dumps({
        "epochs": epochs, "optimizer": optimizer, "lr": lr, "loss": history.loss, "accuracy": accuracy,
        "scales": scales, "artifacts": [p.name for p in (onnx_path, tflite_path) if p is not None],
    }, indent=2) + "\n")
    return QATResult(onnx_path, tflite_path, scales, history, accuracy)


def _example_args(example: Any, train_data: Any, batch_size: int) -> tuple[Any, ...]:
    import torch

    if example is None:
        arrays = arrays_from(train_data)
        if arrays is None:
            x, _ = next(iter(train_data))
            xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
            return tuple(torch.as_tensor(v)[:2] for v in xs)
        example = arrays[0]
    xs = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    return tuple(torch.as_tensor(np.repeat(np.asarray(v)[:1], 2, axis=0)) for v in xs)


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


def _artifact_accuracy(fmt: str, path: Path, args: tuple[Any, ...], eval_data: Any) -> float:
    """Accuracy of an exported artifact, fed through the runtime's own code (int8 I/O included)."""
    from types import SimpleNamespace

    names = [f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))]
    source = SimpleNamespace(
        inputs=tuple(TensorSpec(n, (None, *a.shape[1:]), str(a.dtype).replace("torch.", "")) for n, a in zip(names, args)),
        outputs=(TensorSpec("output", (None,), "float32"),),
    )
    # A CPU board with float I/O that runs this format: the artifact as any such board runs it.
    profile = next(p for p in builtin_profiles().values() if p.format == fmt and p.accelerator == "none"
                   and not p.int8_io)
    model = open_artifact(path, fmt=fmt, precision="int8", source=source, profile=profile, threads=1)
    xs, labels = arrays_from(eval_data)
    scores = next(iter(model.predict(dict(zip(names, xs))).values()))
    return float(np.mean(scores.argmax(1) == labels))


def _allow_function_patterns() -> None:
    """Let PT2E's pattern matchers run on this torch.

    torchao builds its conv/BN and operator patterns by ``torch.export``-ing plain functions,
    which torch 2.13 refuses (it takes modules only). Wrapping each pattern function in a
    module exports the same graph; this patches the helper where torchao and litert-torch
    imported it, once.
    """
    import importlib

    import torch

    names = ("torchao.quantization.pt2e.utils", "torchao.quantization.pt2e.qat_utils",
             "litert_torch.quantize.pt2e_quantizer_utils")
    modules = [importlib.import_module(n) for n in names]
    original = modules[0]._get_aten_graph_module_for_pattern
    if getattr(original, "_edgec_wrapped", False):
        return

    def wrapped(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        if not isinstance(pattern, torch.nn.Module):
            function = pattern

            class Pattern(torch.nn.Module):
                def forward(self, *a: Any, **k: Any) -> Any:
                    return function(*a, **k)

            pattern = Pattern()
        return original(pattern, example_inputs, is_cuda, **kwargs)

    wrapped._edgec_wrapped = True  # type: ignore[attr-defined]
    for module in modules:
        if hasattr(module, "_get_aten_graph_module_for_pattern"):
            module._get_aten_graph_module_for_pattern = wrapped
