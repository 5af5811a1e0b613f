"""The golden parity check: does this board's runtime give the answers the host got?

``edgec convert`` stores a few held-out inputs and the outputs the host's runtime gave for
them in the bundle (``golden.npz``: ``input_0..``, ``output_0..`` in manifest order; listed
in the manifest's sha256 sums, so it is covered by the signature). A board runs the same
inputs through its own runtime and compares: a different interpreter build, delegate or
int8 kernel that changes the answers fails here, before the model serves anyone.

The tolerance comes from the precision: the worst absolute difference over an output,
divided by the largest magnitude the host saw there, must stay under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BundleError, EdgecError

if TYPE_CHECKING:
    from .model import LoadedModel

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # anything quantized (int8, dynamic, mixed): DEFAULT
DEFAULT_TOLERANCE = 0.05  # a few output quantization steps: kernels may round differently, not disagree


@dataclass(frozen=True)
class Parity:
    """What the check found: the worst relative error over all outputs, against the tolerance."""

    samples: int
    worst: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.worst <= self.tolerance

    def describe(self) -> str:
        if self.ok:
            return f"{self.samples} golden sample(s) give the host's answers (error {self.worst:.2g} ≤ {self.tolerance:g})"
        return (f"answers differ from the host's on {self.samples} golden sample(s) (error {self.worst:.3g} > "
                f"tolerance {self.tolerance:g}): this board's runtime computes this model differently")


def check_parity(model: LoadedModel) -> Parity | None:
    """Run the bundle's golden inputs through ``model``; None when the bundle has none.

    Raises:
        BundleError: ``golden.npz`` is unreadable or does not fit the model.
    """
    manifest = model.manifest
    golden = model.golden
    if golden is None:
        return None
    feeds, expected = golden
    try:
        got = model.predict(feeds)
    except EdgecError as exc:
        raise BundleError(f"the golden samples do not run: {exc}") from None
    worst = 0.0
    for spec, want in zip(manifest.outputs, expected):
        have = np.asarray(got[spec.name], dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if have.shape != want.shape:
            raise BundleError(f"output {spec.name} has shape {have.shape} on this board, {want.shape} on the host")
        finite = np.isfinite(want)
        if not np.array_equal(np.isfinite(have), finite):
            worst = float("inf")  # NaN or inf where the host had numbers, or the other way round
            continue
        scale = max(float(np.max(np.abs(want[finite]))) if finite.any() else 0.0, 1e-6)
        if finite.any():
            worst = max(worst, float(np.max(np.abs(have[finite] - want[finite]))) / scale)
    first = next(iter(feeds.values()), None)
    n = 0 if first is None else len(first) if np.ndim(first) else 1  # (a 0-d input: one sample)
    return Parity(n, worst, TOLERANCE.get(manifest.precision, DEFAULT_TOLERANCE))


def require_parity(model: LoadedModel) -> Parity | None:
    """:func:`check_parity`, raising when the answers differ.

    Raises:
        BundleError: The board's answers differ from the host's past the tolerance.
    """
    parity = check_parity(model)
    if parity is not None and not parity.ok:
        raise BundleError(f"{Path(model.path).name}: {parity.describe()}")
    return parity

