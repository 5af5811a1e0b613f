"""Inference backends behind one protocol, one module per format (as the converters are).

A backend runs a model file on arrays already in the model's own dtypes and names; the
caller-facing work (dtype casts, int8 I/O, batching) lives in :mod:`edgec.runtime.bundle.model`.
Which module opens a format comes from the format table (:mod:`edgec.formats`); each module
imports its own runtime (onnxruntime, a TFLite interpreter) only when a model is opened.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ....errors import BundleError, ValidationError
from ....formats import FORMATS, get_format


class Backend(Protocol):
    """Runs one model file.

    Attributes:
        name: The backend's name (``onnxruntime``, ``tflite``).
        input_types: The model file's inputs: name -> numpy dtype name.
        output_names: The model file's outputs, in order.
    """

    name: str
    input_types: dict[str, str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``feeds`` (keyed by model tensor name); outputs in model order."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """How to open a model file.

    Attributes:
        threads: Inference threads.
        providers: onnxruntime execution providers to try, in order (CPU is always last).
        lean: Trade a little speed for memory (no onnxruntime arena): for memory budgets.
        exact_int8: Run int8 on exact kernels where the fast ones can saturate (x86 without
            VNNI); bundles whose weights use 7 bits do not need it.
    """

    threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    lean: bool = False
    exact_int8: bool = True


def open_backend(fmt: str, path: Path, options: BackendOptions) -> Backend:
    """Open ``path`` with the backend the format table names for ``fmt``.

    Raises:
        BundleError: Unknown format, or the backend cannot load the file.
        MissingDependencyError: The backend's runtime is not installed.
    """
    try:
        module = get_format(fmt).backend
    except ValidationError:
        raise BundleError(f"bundle format {fmt!r} is not one this runtime serves ({', '.join(FORMATS)})") from None
    return importlib.import_module(module).BACKEND(path, options)
