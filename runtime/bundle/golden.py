"""A bundle's golden samples (``golden.npz``): a few held-out inputs and the answers the host's runtime
gave for them, ``input_0..`` and ``output_0..`` in manifest order. Listed in the manifest's sha256 sums,
so the signature covers them. Written by ``edgec convert``; read by the load check's warm-up and by the
parity check (:mod:`.parity`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import BundleError
from .arrays import read_npz, write_npz
from .manifest import Manifest

GOLDEN_NAME = "golden.npz"
GOLDEN_SAMPLES = 8
MAX_GOLDEN_BYTES = 64 * 2**20


def write_golden(bundle: Path, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                 input_names: Sequence[str], output_names: Sequence[str]) -> Path:
    """Write ``golden.npz`` into ``bundle`` (the host side of the check)."""
    arrays = {f"input_{i}": np.asarray(inputs[name]) for i, name in enumerate(input_names)}
    arrays.update({f"output_{i}": np.asarray(outputs[name]) for i, name in enumerate(output_names)})
    return write_npz(bundle / GOLDEN_NAME, arrays)


def read_golden(folder: Path, manifest: Manifest) -> tuple[dict[str, np.ndarray], list[np.ndarray]] | None:
    """The golden inputs (keyed by input name) and outputs (in manifest order); ``None`` without any.

    Raises:
        BundleError: ``golden.npz`` is unreadable or lacks an input or output of the model.
    """
    if GOLDEN_NAME not in manifest.files:
        return None
    golden = read_npz(Path(folder) / GOLDEN_NAME, what=f"{GOLDEN_NAME} of {Path(folder).name}", error=BundleError,
                      max_bytes=MAX_GOLDEN_BYTES)
    try:
        return ({spec.name: golden[f"input_{i}"] for i, spec in enumerate(manifest.inputs)},
                [golden[f"output_{i}"] for i in range(len(manifest.outputs))])
    except KeyError as exc:
        raise BundleError(f"{GOLDEN_NAME} lacks {exc.args[0]}: rebuild the bundle") from None
