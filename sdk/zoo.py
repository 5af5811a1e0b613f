"""Small real models on real data, for the quick start, the tests and the benchmarks.

The data is scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits that ship
inside the package, so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MissingDependencyError


@dataclass(frozen=True)
class DigitsSplits:
    """Disjoint train / calibration / test splits of the digits data (NCHW float32 in [0, 1])."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_splits(seed: int = 0) -> DigitsSplits:
    """Split the digits 60 / 15 / 25 into train, calibration and test, deterministically."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("scikit-learn", "sdk", "for the digits data") from None
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train, n_calib = int(0.60 * len(x)), int(0.15 * len(x))
    a, b = n_train, n_train + n_calib
    return DigitsSplits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "sdk", "to build the example models") from None
    return torch


def seeded(build: Any, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """Call a model builder with torch's RNG seeded, so weight init is reproducible."""
    _torch().manual_seed(seed)
    return build(*args, **kwargs)


def digits_cnn(width: int = 32) -> Any:
    """A small CNN for 1x8x8 digits: three conv blocks, global pooling, a linear head."""
    torch = _torch()
    nn = torch.nn
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
    )


def digits_mlp() -> Any:
    """A two-hidden-layer MLP over the 64 pixels."""
    torch = _torch()
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def digits_dwcnn(width: int = 64) -> Any:
    """A MobileNet-style CNN (depthwise-separable blocks), the kind naive int8 hurts most."""
    torch = _torch()
    nn = torch.nn

    def block(cin: int, cout: int) -> list[Any]:
        return [
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU6(),
        ]

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU6(),
        *block(width, width), *block(width, 2 * width), nn.MaxPool2d(2),
        *block(2 * width, 2 * width), *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10),
    )


def train(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int = 10, lr: float = 3e-3, seed: int = 0) -> Any:
    """Train ``model`` with Adam and cross-entropy on CPU; return it in eval mode."""
    torch = _torch()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def export_pt2(model: Any, example: np.ndarray, path: Any) -> None:
    """Save ``model`` as a ``torch.export`` program with a dynamic batch dimension."""
    torch = _torch()
    sample = torch.from_numpy(np.repeat(example[:1], 2, axis=0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model.eval(), (sample,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def evaluate_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    torch = _torch()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
