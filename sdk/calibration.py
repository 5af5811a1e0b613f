"""Sample data for calibration and verification: loading, checking and splitting.

Any of these is sample data: an ``.npz`` keyed by input name (or holding one array for a
single-input model) with an optional ``labels`` array; a folder of images (class
sub-folders give labels); a dict of arrays; one array; or any iterable of per-sample arrays
or dicts, with an optional ``transform`` applied to each item.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CalibrationError
from ..runtime.manifest import TensorSpec

LABELS_KEY = "labels"
MIN_SAMPLES = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageOptions:
    """How to turn image files into model inputs.

    Attributes:
        size: ``(height, width)``; ``None`` takes it from the model's input shape.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel std divided after the mean.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if any(s == 0 for s in self.std):
            raise CalibrationError("--std values must not be 0")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise CalibrationError(f"--image-size {self.size} must be two positive numbers (height, width)")


@dataclass
class SampleSet:
    """Named arrays sharing a first (sample) axis, with optional labels."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def take(self, index: np.ndarray | slice) -> SampleSet:
        labels = None if self.labels is None else self.labels[index]
        return SampleSet({k: v[index] for k, v in self.arrays.items()}, labels, self.source)

    def split(self, holdout: float = 0.2, *, seed: int = 0, max_holdout: int = 500) -> tuple[SampleSet, SampleSet]:
        """Split into (calibration, held-out) at random, deterministically."""
        n = len(self)
        n_hold = min(max_holdout, max(1, int(round(n * holdout))))
        order = np.random.default_rng(seed).permutation(n)
        return self.take(np.sort(order[n_hold:])), self.take(np.sort(order[:n_hold]))

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """One dict per sample, each array keeping a batch axis of 1."""
        for i in range(len(self)):
            yield {k: v[i : i + 1] for k, v in self.arrays.items()}

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.arrays.items()}


def load_samples(
    data: Any,
    inputs: Sequence[TensorSpec],
    *,
    image: ImageOptions | None = None,
    transform: Callable[[Any], Any] | None = None,
    what: str = "calibration data",
) -> tuple[SampleSet, list[str]]:
    """Load and check sample data against the model's inputs.

    Args:
        data: A path (``.npz`` or an image folder), a dict of arrays, an array, or an
            iterable of per-sample items.
        inputs: The model's input specs.
        image: Options for image folders.
        transform: Applied to each item of an iterable before it is checked.
        what: How messages name this data.

    Returns:
        The samples and a list of warnings (each a sentence with numbers).

    Raises:
        CalibrationError: No samples, or arrays whose names, shapes or dtypes do not fit.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise CalibrationError(f"{what} {path} does not exist")
        if path.is_dir():
            samples = _load_images(path, inputs, image or ImageOptions(), what)
        elif path.suffix.lower() == ".npz":
            samples = _load_npz(path, inputs, what)
        else:
            raise CalibrationError(
                f"{what} {path.name} is neither an .npz file nor a folder of images"
            )
    elif isinstance(data, Mapping):
        samples = _match_names(dict(data), inputs, what, source="dict")
    elif isinstance(data, np.ndarray):
        samples = _match_names({"array": data}, inputs, what, source="array")
    elif isinstance(data, Iterable):
        samples = _stack_items(data, inputs, transform, what)
    else:
        raise CalibrationError(f"{what} must be a path, dict, array or iterable, got {type(data).__name__}")
    return samples, check_samples(samples, inputs, what)


def _load_npz(path: Path, inputs: Sequence[TensorSpec], what: str) -> SampleSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CalibrationError(
                f"{what} {path.name} holds object (pickled) arrays, which edgec refuses to load: "
                "save plain numeric arrays with np.savez"
            ) from None
        raise CalibrationError(f"{what} {path.name} is not a readable .npz ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"{what} {path.name} is not a readable .npz ({exc}); it may be truncated") from None
    return _match_names(arrays, inputs, what, source=path.name)


def _match_names(arrays: dict[str, Any], inputs: Sequence[TensorSpec], what: str, *, source: str) -> SampleSet:
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    labels = arrays.pop(LABELS_KEY, None)
    names = [t.name for t in inputs]
    if len(inputs) == 1 and len(arrays) == 1:
        chosen = {names[0]: next(iter(arrays.values()))}
    else:
        missing = [n for n in names if n not in arrays]
        if missing:
            raise CalibrationError(
                f"{what} ({source}) has no array for input {', '.join(missing)} (it has "
                f"{', '.join(arrays) or 'none'}): key the arrays by the model's input names "
                f"{', '.join(names)}"
            )
        chosen = {n: arrays[n] for n in names}
    return SampleSet(chosen, labels, source)


def _stack_items(
    items: Iterable[Any], inputs: Sequence[TensorSpec], transform: Callable[[Any], Any] | None, what: str
) -> SampleSet:
    names = [t.name for t in inputs]
    columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for item in items:
        if transform is not None:
            item = transform(item)
        if not isinstance(item, Mapping):
            if len(names) != 1:
                raise CalibrationError(f"{what}: items must be dicts keyed by {', '.join(names)}")
            item = {names[0]: item}
        for n in names:
            if n not in item:
                raise CalibrationError(f"{what}: an item has no {n!r} (it has {', '.join(item)})")
            columns[n].append(np.asarray(item[n]))
    if not columns[names[0]]:
        return SampleSet({n: np.zeros((0,)) for n in names}, None, "iterable")
    arrays = {}
    for n, spec in zip(names, inputs):
        parts = columns[n]
        # Items may carry a batch axis of 1 or none at all.
        parts = [p[None] if p.ndim == len(spec.shape) - 1 else p for p in parts]
        try:
            arrays[n] = np.concatenate(parts, axis=0)
        except ValueError as exc:
            raise CalibrationError(f"{what}: items for {n} have different shapes ({exc})") from None
    return SampleSet(arrays, None, "iterable")


def _load_images(folder: Path, inputs: Sequence[TensorSpec], options: ImageOptions, what: str) -> SampleSet:
    try:
        from PIL import Image
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("pillow", "sdk", "to read image folders") from None
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise CalibrationError(f"{what}: an image folder feeds models with one 4-D image input; use an .npz instead")
    spec = inputs[0]
    channels_first = spec.shape[1] in (1, 3)
    channels = spec.shape[1] if channels_first else spec.shape[3]
    if channels not in (1, 3):
        raise CalibrationError(f"{what}: input {spec.describe()} does not look like 1- or 3-channel images")
    size = options.size
    if size is None:
        size = (spec.shape[2], spec.shape[3]) if channels_first else (spec.shape[1], spec.shape[2])
    if size is None or None in size:
        raise CalibrationError(f"{what}: the model's image size is dynamic: pass --image-size HxW")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{what}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    labelled = bool(classes) and all(p.parent != folder for p in files)
    mean = np.asarray(options.mean, dtype=np.float32)
    std = np.asarray(options.std, dtype=np.float32)
    if mean.size not in (1, channels) or std.size not in (1, channels):
        raise CalibrationError(f"--mean/--std need 1 or {channels} values, got {mean.size} and {std.size}")
    images = []
    for p in files:
        try:
            with Image.open(p) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except OSError as exc:
            raise CalibrationError(f"{what}: cannot read image {p} ({exc})") from None
        if arr.ndim == 2:
            arr = arr[..., None]
        arr = (arr - mean) / std
        images.append(arr.transpose(2, 0, 1) if channels_first else arr)
    labels = np.array([classes.index(p.parent.name) for p in files]) if labelled else None
    return SampleSet({spec.name: np.stack(images).astype(np.float32)}, labels, folder.name)


def check_samples(samples: SampleSet, inputs: Sequence[TensorSpec], what: str = "calibration data") -> list[str]:
    """Check names, shapes, dtypes and values; cast float64 to float32.

    Returns:
        Warnings worth showing (too few samples).

    Raises:
        CalibrationError: Anything that would make calibration or verification meaningless.
    """
    warnings: list[str] = []
    n = len(samples)
    if n == 0:
        raise CalibrationError(f"{what} ({samples.source}) has no samples")
    for spec in inputs:
        array = samples.arrays[spec.name]
        if array.ndim != len(spec.shape):
            raise CalibrationError(
                f"{what} array {spec.name!r} has shape {list(array.shape)}, but the model "
                f"expects {spec.describe()} (first axis = samples)"
            )
        for axis, (got, want) in enumerate(zip(array.shape[1:], spec.shape[1:]), start=1):
            if want is not None and got != want:
                raise CalibrationError(
                    f"{what} array {spec.name!r} has shape {list(array.shape)}: dimension "
                    f"{axis} must be {want} for {spec.describe()}"
                )
        if len(array) != n:
            raise CalibrationError(f"{what}: arrays have different sample counts ({n} and {len(array)})")
        kind = array.dtype.kind
        if spec.dtype.startswith("float"):
            if kind != "f":
                raise CalibrationError(
                    f"{what} array {spec.name!r} is {array.dtype}, but the model takes "
                    f"{spec.dtype}: preprocess it as in training (e.g. scale uint8 images to float)"
                )
            if not np.isfinite(array).all():
                raise CalibrationError(f"{what} array {spec.name!r} contains NaN or infinity")
            samples.arrays[spec.name] = array.astype(spec.dtype, copy=False)
        elif spec.dtype.startswith(("int", "uint")):
            if kind not in "iu":
                raise CalibrationError(f"{what} array {spec.name!r} is {array.dtype}, but the model takes {spec.dtype}")
            samples.arrays[spec.name] = array.astype(spec.dtype, copy=False)
        elif spec.dtype == "bool" and kind != "b":
            raise CalibrationError(f"{what} array {spec.name!r} is {array.dtype}, but the model takes bool")
    if samples.labels is not None:
        if samples.labels.ndim != 1 or len(samples.labels) != n or samples.labels.dtype.kind not in "iu":
            raise CalibrationError(
                f"{what}: 'labels' must be one integer class per sample ({n}), got "
                f"{samples.labels.dtype} of shape {list(samples.labels.shape)}"
            )
    if n < MIN_SAMPLES:
        warnings.append(
            f"only {n} samples in {what}: int8 ranges estimated from fewer than {MIN_SAMPLES} "
            "samples often clip real inputs and cost accuracy; 100-500 representative samples are typical"
        )
    return warnings
