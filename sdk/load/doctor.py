"""The calibration-data doctor: catch sample data that would make int8 ranges meaningless.

int8 ranges come from the calibration samples alone. Duplicated or constant samples give
ranges narrower than real inputs; data preprocessed differently from what the model sees
in use (0-255 instead of 0-1, unnormalized instead of normalized) gives ranges that clip or
waste the 256 levels. Each finding carries the numbers that triggered it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from ...errors import CalibrationError
from .data import SampleSet

# Share of exact-duplicate samples worth a warning.
DUPLICATE_WARN = 0.10
# Ratio between calibration and held-out value spreads: a warning past the first, an error past the second.
SPREAD_WARN, SPREAD_ERROR = 2.0, 10.0
# Shift of the held-out mean, in calibration standard deviations, worth a warning.
SHIFT_WARN = 2.0
# Values a range statistic is computed from, at most (drawn at random from larger inputs).
STAT_VALUES = 1 << 20


@dataclass(frozen=True)
class Finding:
    """One problem with the sample data.

    Attributes:
        level: ``warning`` (the result may be worse than it could be) or ``error`` (it would
            be meaningless).
        code: A stable name: ``duplicates``, ``constant``, ``range-mismatch``, ``shift``.
        message: One sentence with the numbers and what to do.
    """

    level: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def diagnose(calib: SampleSet, holdout: SampleSet | None = None, *, eval_given: bool = True) -> list[Finding]:
    """Check calibration samples, and compare them with the held-out ones.

    Args:
        calib: The calibration samples.
        holdout: Samples the model is verified on (the ``--eval`` data, or the held-out split).
        eval_given: The held-out samples come from elsewhere (``--eval``); only then can a
            preprocessing mismatch show.
    """
    found: list[Finding] = []
    n = len(calib)
    digests = {
        hashlib.blake2b(b"".join(np.ascontiguousarray(a[i]).tobytes() for a in calib.arrays.values()),
                        digest_size=16).digest()
        for i in range(n)
    }
    dupes = n - len(digests)
    if n > 1 and len(digests) == 1:
        found.append(Finding("error", "duplicates", f"all {n} calibration samples are identical: ranges calibrated "
                                                    "on one input clip every other; pass varied, real inputs"))
    elif n and dupes / n > DUPLICATE_WARN:
        found.append(Finding("warning", "duplicates", f"{dupes} of {n} calibration samples ({dupes / n:.0%}) are "
                                                      "exact duplicates: calibration sees fewer distinct inputs than it seems"))
    for name, array in calib.arrays.items():
        if array.dtype.kind != "f" or array.size == 0:
            continue
        lo, hi = float(array.min()), float(array.max())
        if lo == hi and n > 1:
            found.append(Finding("error", "constant", f"calibration input {name!r} is constant (every value {lo:g}) "
                                                      "across all samples: its int8 range would be meaningless"))
            continue
        if holdout is None or not eval_given or name not in holdout.arrays:
            continue
        held, cal = _subsample(holdout.arrays[name]), _subsample(array)
        c_lo, c_hi = np.percentile(cal, [0.1, 99.9])
        h_lo, h_hi = np.percentile(held, [0.1, 99.9])
        c_span, h_span = max(c_hi - c_lo, 1e-12), max(h_hi - h_lo, 1e-12)
        ratio = max(c_span / h_span, h_span / c_span)
        where = (f"calibration {name!r} spans [{c_lo:.3g}, {c_hi:.3g}], held-out [{h_lo:.3g}, {h_hi:.3g}] "
                 f"({ratio:.1f}x apart)")
        if ratio > SPREAD_ERROR:
            found.append(Finding("error", "range-mismatch", f"{where}: the two were preprocessed differently "
                                                            "(e.g. 0-255 vs 0-1, or normalized vs not); fix the preprocessing"))
        elif ratio > SPREAD_WARN:
            found.append(Finding("warning", "range-mismatch", f"{where}: check both use the same preprocessing"))
        else:
            std = float(cal.std()) or 1e-12
            shift = abs(float(held.mean()) - float(cal.mean())) / std
            if shift > SHIFT_WARN:
                found.append(Finding("warning", "shift", f"held-out {name!r} mean {held.mean():.3g} is {shift:.1f} "
                                                         f"calibration standard deviations from its mean {cal.mean():.3g}: "
                                                         "the calibration data may not represent real inputs"))
    return found


def _subsample(array: np.ndarray) -> np.ndarray:
    """``array`` as float64, or :data:`STAT_VALUES` of its values drawn at random (seeded) when larger.

    Percentiles and means of a million values are as good as of all of them, and large
    inputs (a 736x736 RGB image is 1.6M values a sample) are not copied whole, twice.
    """
    flat = array.reshape(-1)
    if flat.size <= STAT_VALUES:
        return flat.astype(np.float64)
    return flat[np.random.default_rng(0).integers(0, flat.size, STAT_VALUES)].astype(np.float64)


def raise_errors(findings: list[Finding]) -> None:
    """Raise the first error finding as a :class:`CalibrationError`."""
    for f in findings:
        if f.level == "error":
            raise CalibrationError(f.message)
