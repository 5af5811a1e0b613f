"""Honest shifts of real digits (NCHW float32 in [0, 1]), in numpy alone: what a board's camera does to them."""

from __future__ import annotations

import numpy as np


def noise(x: np.ndarray, sigma: float = 0.1, seed: int = 0) -> np.ndarray:
    """Sensor noise, clipped to the pixels' range."""
    return np.clip(x + np.random.default_rng(seed).normal(0, sigma, x.shape), 0, 1).astype(np.float32)


def blur(x: np.ndarray) -> np.ndarray:
    """A 3x3 box blur (a lens out of focus), edges repeated."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = x.shape[2:]
    return sum(padded[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)).astype(np.float32) / 9


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation about the centre with bilinear sampling; outside the image is 0 (the digits' background)."""
    h, w = x.shape[2:]
    t = np.deg2rad(degrees)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    sy = cy + (yy - cy) * np.cos(t) - (xx - cx) * np.sin(t)
    sx = cx + (yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0
    out = np.zeros_like(x, dtype=np.float64)
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yi, xi = y0 + dy, x0 + dx
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        out += weight * inside * x[:, :, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
    return out.astype(np.float32)


def dim(x: np.ndarray, factor: float = 0.7) -> np.ndarray:
    """Less light: every pixel scaled down."""
    return (x * factor).astype(np.float32)


SHIFTS = {"noise": noise, "blur": blur, "rotate": lambda x: rotate(x, 15), "dim": dim}
