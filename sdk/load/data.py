"""Sample data for calibration and verification: loading, checking and splitting.

Any of these is sample data: an ``.npz`` keyed by input name (or holding one array for a
single-input model) with an optional ``labels`` array; a folder of images (class
sub-folders give labels); a dict of arrays; one array; or any iterable of per-sample arrays
or dicts, with an optional ``transform`` applied to each item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ...errors import CalibrationError
from ...runtime.bundle.arrays import read_npz
from ...runtime.bundle.tensors import TensorSpec, check_listed

LABELS_KEY = "labels"
MIN_SAMPLES = 32
# Random inputs used to check a conversion when no sample data is given.
SYNTHETIC_SAMPLES = 64
# Held-out samples used to measure each candidate.
MAX_EVAL_SAMPLES = 500
# Input values per batch when samples run through a model (calibration, verification): a batch's
# activations are what the run holds at once, so large samples (a 736x736 RGB image is 1.6M
# values) go one at a time.
BATCH_VALUES = 2**20
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
    """Named arrays sharing a first (sample) axis, with optional labels. An array of its input's rank has
    the model's batch on that axis; one of an axis more (``whole``) lists whole inputs, fed one at a time
    as they are: an RNN state ``[N, 2, 1, 128]`` for ``[2, batch, 128]``, ``[N]`` for a 0-d input."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""
    whole: frozenset[str] = frozenset()  # inputs whose arrays list whole inputs along the first axis

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def take(self, index: np.ndarray | slice) -> SampleSet:
        labels = None if self.labels is None else self.labels[index]
        return SampleSet({k: v[index] for k, v in self.arrays.items()}, labels, self.source, self.whole)

    def split(self, holdout: float = 0.2, *, seed: int = 0, max_holdout: int = 500) -> tuple[SampleSet, SampleSet]:
        """Split into (calibration, held-out) at random, deterministically."""
        n = len(self)
        n_hold = min(max_holdout, max(1, int(round(n * holdout))))
        order = np.random.default_rng(seed).permutation(n)
        return self.take(np.sort(order[n_hold:])), self.take(np.sort(order[:n_hold]))

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """One dict per sample, each array keeping a batch axis of 1 (a whole input: as listed)."""
        for i in range(len(self)):
            yield {k: np.asarray(v[i]) if k in self.whole else v[i : i + 1] for k, v in self.arrays.items()}

    def batch_size(self, most: int) -> int:
        """Samples per batch: ``most`` for small samples, fewer as they grow, at least 1 (a batch's
        activations are what a run holds at once: about the batch times one sample's)."""
        values = sum(int(np.prod(v.shape[1:])) for v in self.arrays.values()) or 1
        return max(1, min(most, BATCH_VALUES // values))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of up to ``size`` samples (one each when an input is listed whole)."""
        if self.whole:
            yield from self.samples()
            return
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
    arrays = read_npz(path, what=f"{what} {path.name}", error=CalibrationError)
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
    for spec in inputs:  # (check_samples finds the inputs listed whole)
        if chosen[spec.name].ndim == 0 and not spec.shape:  # one value for a 0-d input: one sample
            chosen[spec.name] = chosen[spec.name].reshape(1)
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
    Image = need("PIL.Image", extra="sdk", purpose="to read image folders")
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
        whole, problem = check_listed(array, spec, what=f"{what} array")
        if whole:
            samples.whole = samples.whole | {spec.name}
        if not problem and not whole and spec.shape and spec.shape[0] not in (None, 1):
            problem = (f"{what} array {spec.name} has shape {list(array.shape)}, but the input's first axis is "
                       f"{spec.shape[0]}, not a batch ({spec.describe()}): list whole inputs along one more axis, "
                       f"[N, {', '.join('?' if d is None else str(d) for d in spec.shape)}]")
        if problem:
            raise CalibrationError(problem + ("" if whole else f" (or {len(spec.shape) + 1}, the first listing whole "
                                                             "inputs)" if "dimensions" in problem else ""))
        if len(array) != n:
            raise CalibrationError(f"{what}: arrays have different sample counts ({n} and {len(array)})")
        if spec.dtype.startswith("float"):
            if not np.isfinite(array).all():
                raise CalibrationError(f"{what} array {spec.name!r} contains NaN or infinity")
            samples.arrays[spec.name] = array.astype(spec.dtype, copy=False)
        elif spec.dtype.startswith(("int", "uint")):
            samples.arrays[spec.name] = array.astype(spec.dtype, copy=False)
    if samples.labels is not None:
        if samples.labels.ndim != 1 or len(samples.labels) != n or samples.labels.dtype.kind not in "iu":
            raise CalibrationError(
                f"{what}: 'labels' must be one integer class per sample ({n}), got "
                f"{samples.labels.dtype} of shape {list(samples.labels.shape)}"
            )
    if n < MIN_SAMPLES and what.startswith("--eval"):  # held-out data: never used for ranges
        warnings.append(
            f"only {n} samples in {what}: fidelity and accuracy measured on fewer than {MIN_SAMPLES} held-out "
            "samples are noisy; 100-500 are typical"
        )
    elif n < MIN_SAMPLES:
        warnings.append(
            f"only {n} samples in {what}: int8 ranges estimated from fewer than {MIN_SAMPLES} "
            "samples often clip real inputs and cost accuracy; 100-500 representative samples are typical"
        )
    return warnings


@dataclass
class Split:
    """The sample data of one conversion.

    Attributes:
        calib: Samples to calibrate int8 on (``None`` when no int8 is tried).
        holdout: Held-out samples every artifact is measured and verified on.
        info: What the report says about the data (sources, counts, labels, synthetic).
        warnings: Sentences worth showing the user.
    """

    calib: SampleSet | None
    holdout: SampleSet
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return bool(self.info["synthetic"])


def split_samples(calib: Any, eval_data: Any, inputs: Sequence[TensorSpec], *, quantized: bool,
                  holdout: float = 0.2, seed: int = 0, image: ImageOptions | None = None,
                  max_eval: int = MAX_EVAL_SAMPLES) -> Split:
    """Calibration and held-out samples from ``--calib`` and ``--eval``.

    With ``eval_data`` the held-out samples come from it alone; without, a ``holdout`` share of
    ``calib`` is held out (never calibrated on). Without any data, synthetic inputs check the
    conversion (not accuracy).

    Args:
        calib, eval_data: Sample data (see :func:`load_samples`), or ``None``.
        inputs: The model's inputs.
        quantized: int8 may be tried (then ``calib`` is kept for calibration).
        holdout: Share of ``calib`` held out when there is no ``eval_data``.
        seed: Seed of the split and of synthetic inputs.
        image: Options for image folders.
        max_eval: Most held-out samples used.

    Raises:
        CalibrationError: Data that does not fit the model, or too little of it for int8.
    """
    if eval_data is not None:
        held, found = load_samples(eval_data, inputs, image=image, what="--eval data")
        held = held.take(slice(0, max_eval))
        calib_set = None
        if calib is not None and quantized:
            calib_set, more = load_samples(calib, inputs, image=image)
            found = found + more
        return Split(calib_set, held, {
            "source": held.source, "calibration": calib_set.source if calib_set else None, "synthetic": False,
            "labels": held.labels is not None, "calibration_samples": len(calib_set) if calib_set else 0,
            "holdout_samples": len(held)}, found)
    if calib is None:
        rng = np.random.default_rng(seed)
        arrays = {}
        for t in inputs:
            shape = (SYNTHETIC_SAMPLES, *(1 if d is None else d for d in t.shape[1:]))
            arrays[t.name] = rng.standard_normal(shape).astype(t.dtype) if t.dtype.startswith("float") \
                else np.zeros(shape, t.dtype)
        held = SampleSet(arrays, None, "synthetic")
        return Split(None, held, {"source": "synthetic (no --calib)", "synthetic": True, "labels": False,
                                  "calibration_samples": 0, "holdout_samples": len(held)})
    samples, found = load_samples(calib, inputs, image=image)
    if quantized:
        if len(samples) < 2:
            raise CalibrationError(f"int8 needs at least 2 samples (some to calibrate, some held out to verify); "
                                   f"{samples.source} has {len(samples)}")
        calib_set, held = samples.split(holdout, seed=seed)
        found = found if len(calib_set) >= MIN_SAMPLES else [
            f"only {len(calib_set)} samples left for calibration after holding out {len(held)} for "
            "verification: int8 ranges from so few samples often clip real inputs; 100-500 are typical"]
    else:
        calib_set, held = None, samples.take(slice(0, max_eval))
        found = []  # float precisions use the samples only to verify
    return Split(calib_set, held, {
        "source": samples.source, "synthetic": False, "labels": samples.labels is not None,
        "calibration_samples": len(calib_set) if calib_set is not None else 0, "holdout_samples": len(held)}, found)
