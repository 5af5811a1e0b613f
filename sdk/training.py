"""A small training loop on plain torch: the user's data, an optimizer, epochs, a callback.

Data is any of: an ``.npz`` path or dict of arrays keyed by input name plus ``labels``;
``(inputs, labels)`` arrays; or an iterable of ``(x, y)`` batches (a ``DataLoader``), where
``x`` is a tensor or a tuple of tensors. Used by quantization-aware training and compression.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CalibrationError, ValidationError
from ..runtime.bundle.arrays import read_npz

OPTIMIZERS = ("adam", "adamw", "sgd")
TRAIN_DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked for spelling (not yet for a GPU: see :func:`train_device`).

    Raises:
        ValidationError: Anything else.
    """
    if name in TRAIN_DEVICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValidationError(f"--train-device {name!r} is not one of auto, cpu, cuda (or cuda:N)")


def train_device(name: str) -> Any:
    """The ``torch.device`` to train on: ``auto`` takes CUDA when torch sees a GPU, else the CPU.

    Raises:
        ValidationError: ``cuda`` asked for where torch sees no CUDA device (a CPU build of torch, no driver).
    """
    import torch

    name = check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValidationError(f"--train-device {name}: torch {torch.__version__} sees no CUDA device (a CPU build "
                                  "of torch, or no NVIDIA driver); install torch's CUDA build, or train with "
                                  "--train-device cpu (or auto)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValidationError(f"--train-device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def device_name(device: Any) -> str:
    """The device in words for a report: ``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


@dataclass
class History:
    """Per-epoch training loss and whatever the callback returned."""

    loss: list[float] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)


def arrays_from(data: Any, input_names: list[str] | None = None) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
    """``(inputs, labels)`` arrays from an ``.npz`` path, a dict or a pair; ``None`` for an iterable of batches.

    Raises:
        CalibrationError: No ``labels``, an unknown input name, or mismatched lengths.
    """
    if isinstance(data, (str, Path)):
        data = read_npz(data, what=f"training data {data}", error=CalibrationError)
    if isinstance(data, dict):
        if "labels" not in data:
            raise CalibrationError("training data needs a `labels` array beside the inputs")
        names = [k for k in data if k != "labels"]
        missing = [n for n in input_names or [] if n not in data]
        single = len(names) == 1 and input_names is not None and len(input_names) == 1  # one array, one input
        if missing and not single:
            raise CalibrationError(f"training data has no array for input(s) {', '.join(missing)}; "
                                   f"it has {', '.join(names)}")
        if input_names and not missing:
            names = list(input_names)
        xs = tuple(np.asarray(data[n]) for n in names)
        labels = np.asarray(data["labels"])
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], np.ndarray):
        x, labels = data
        xs = tuple(x) if isinstance(x, (tuple, list)) else (np.asarray(x),)
    else:
        return None
    if any(len(x) != len(labels) for x in xs):
        raise CalibrationError(f"training data: {len(labels)} labels but inputs of {[len(x) for x in xs]} samples")
    return tuple(x.astype(np.float32) if x.dtype == np.float64 else x for x in xs), labels.astype(np.int64)


def batches(data: Any, *, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
            input_names: list[str] | None = None,
            device: Any = None) -> Callable[[int], Iterator[tuple[tuple[Any, ...], Any]]]:
    """A function ``epoch -> iterator of (inputs tuple, labels)`` tensors over ``data``, on ``device``
    (default: where they are, the CPU). For a GPU, arrays are pinned once and each batch is copied as
    the previous one trains."""
    import torch

    on = (lambda t: t) if device is None or device.type == "cpu" else (lambda t: t.to(device, non_blocking=True))

    arrays = arrays_from(data, input_names)
    if arrays is None:
        if not isinstance(data, Iterable):
            raise CalibrationError(f"cannot train on {type(data).__name__}: pass an .npz, a dict, "
                                   "(inputs, labels) arrays or an iterable of (x, y) batches")

        def from_iterable(epoch: int) -> Iterator[tuple[tuple[Any, ...], Any]]:
            for x, y in data:
                xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
                yield tuple(on(torch.as_tensor(v)) for v in xs), on(torch.as_tensor(y))

        return from_iterable
    xs, labels = arrays
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in xs)
    y = torch.from_numpy(labels)
    if device is not None and device.type == "cuda":
        tensors, y = tuple(t.pin_memory() for t in tensors), y.pin_memory()

    def from_arrays(epoch: int) -> Iterator[tuple[tuple[Any, ...], Any]]:
        n = len(y)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
                 if shuffle else torch.arange(n))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield tuple(on(t[idx]) for t in tensors), on(y[idx])

    return from_arrays


def fit(
    model: Any,
    data: Any,
    *,
    epochs: int = 3,
    optimizer: str = "adam",
    lr: float = 1e-3,
    batch_size: int = 64,
    loss: Callable[[Any, Any, tuple[Any, ...]], Any] | None = None,
    callback: Callable[[int, Any], Any] | None = None,
    train_mode: Callable[[Any], None] | None = None,
    eval_mode: Callable[[Any], None] | None = None,
    input_names: list[str] | None = None,
    extra_params: list[Any] | None = None,
    after_step: Callable[[], None] | None = None,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    device: Any = None,
) -> History:
    """Train ``model`` in place.

    Args:
        model: A ``torch.nn.Module`` (or an exported graph module).
        data: See the module docstring.
        epochs: Passes over ``data``.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9).
        lr: Learning rate (cosine-annealed to zero over the epochs).
        loss: ``loss(outputs, labels, inputs)``; default cross-entropy on the first output.
        callback: Called after each epoch with ``(epoch, model)``, in eval mode; what it
            returns goes into ``History.metrics``.
        train_mode, eval_mode: How to switch modes (exported graph modules need their own).
        extra_params: More parameters to train with the model's (distillation adapters).
        after_step: Called after every optimizer step (to re-apply pruning masks).
        seed: Shuffling and initialisation seed.
        progress: ``progress(epoch, epochs, mean_loss)`` after each epoch.
        device: Where to train (a ``torch.device``; default the CPU). The model and ``extra_params``' modules
            must already be there (:func:`on_device`); batches are moved as they are drawn.

    Raises:
        ValidationError: Bad epochs, learning rate or optimizer.
    """
    import torch

    if epochs < 1:
        raise ValidationError(f"epochs must be at least 1, got {epochs}")
    if lr <= 0:
        raise ValidationError(f"learning rate must be positive, got {lr}")
    if optimizer not in OPTIMIZERS:
        raise ValidationError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params or [])
    opt = {
        "adam": lambda: torch.optim.Adam(params, lr=lr),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
    }[optimizer]()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss = loss or (lambda out, y, _: torch.nn.functional.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y))
    train_mode = train_mode or (lambda m: m.train())
    eval_mode = eval_mode or (lambda m: m.eval())
    epoch_batches = batches(data, batch_size=batch_size, seed=seed, input_names=input_names, device=device)
    history = History()
    for epoch in range(epochs):
        train_mode(model)
        total, count = 0.0, 0
        for xs, y in epoch_batches(epoch):
            opt.zero_grad()
            value = loss(model(*xs), y, xs)
            value.backward()
            opt.step()
            if after_step is not None:
                after_step()
            total += value.detach() * len(y)  # (summed where it was computed: no sync with a GPU each step)
            count += len(y)
        sched.step()
        eval_mode(model)
        history.loss.append(float(total) / max(count, 1))
        if callback is not None:
            history.metrics.append(callback(epoch, model))
        if progress is not None:
            progress(epoch + 1, epochs, history.loss[-1])
    return history
