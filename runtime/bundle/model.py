"""A loaded bundle: checks its files, opens its backend, and feeds it correctly.

Callers pass float arrays (or integer token ids) keyed by input name and get float arrays
back; int8 I/O is quantized and dequantized here from the manifest's scales and zero
points, and models with a fixed batch of 1 are run sample by sample.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError, InferenceError, InputError, first_line
from .backends import Backend, BackendOptions, open_backend
from .golden import read_golden
from .manifest import Manifest, read_manifest, verify_files
from .tensors import QUANTIZED, TensorSpec, check_array, dequantize, lists_whole, quantize

class LoadedModel:
    """A bundle ready to serve.

    Attributes:
        path: The bundle folder.
        manifest: Its parsed manifest.
        backend: The backend running its model file.
        load_seconds: Wall time of hash checks plus backend start.
    """

    def __init__(self, path: Path, manifest: Manifest, backend: Backend, load_seconds: float) -> None:
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self.load_seconds = load_seconds
        _check_agreement(manifest, backend)
        # Arrays that already are exactly what the model file takes (dtype, every fixed
        # dimension, C order) skip the casts; anything else goes through the full checks.
        self._exact = {
            spec.name: (spec.model_name, np.dtype(spec.dtype), spec.shape,
                        spec.shape[1:] if None not in spec.shape[1:] else None)
            for spec in manifest.inputs
            if spec.quantization is None and spec.shape
        }
        # Names of outputs that come out of the backend as they are served (else None).
        self._plain_outputs = tuple(spec.name for spec in manifest.outputs) if all(
            spec.quantization is None and spec.dtype != "float16" for spec in manifest.outputs
        ) else None
        # A fixed batch of 1 on every input: larger ones run row by row. (A model whose inputs disagree on
        # their first axis, a state [2, batch, 128] beside [batch, T, F], takes each input whole.)
        self._batch_of_one = bool(manifest.inputs) and all(spec.shape[:1] == (1,) for spec in manifest.inputs)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    def __repr__(self) -> str:
        ins = ", ".join(t.describe() for t in self.inputs)
        return (
            f"LoadedModel({self.path.name}: {self.manifest.format}/{self.manifest.precision}, "
            f"backend={self.backend.name}, inputs=[{ins}])"
        )

    def predict(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        """Run the model.

        Args:
            inputs: Arrays keyed by input name, first axis the batch; a bare array for a
                single-input model. Floats for float or int8-quantized inputs, integers for
                integer inputs (token ids).

        Returns:
            Outputs keyed by name, float32 for every float or quantized output.

        Raises:
            InputError: A missing or unknown input, a wrong rank, dimension or dtype, or
                inputs whose batch sizes differ.
        """
        feeds = self._exact_feeds(inputs)
        if feeds is None:
            feeds = self._prepare(inputs)
        first = next(iter(feeds.values()))
        if first.ndim and first.shape[0] == 0:
            raise InputError("the inputs hold 0 samples: send a batch of at least one")
        batch = first.shape[0] if self._batch_of_one else 1
        try:
            if batch > 1:
                parts = [self.backend.run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(batch)]
                raw = [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(self.outputs))]
            else:
                raw = self.backend.run(feeds)
        except Exception as exc:  # a backend's own error types: the model failed, not the request
            raise InferenceError(f"model {self.path.name} failed in {self.backend.name}: {first_line(exc)}") from None
        if self._plain_outputs is not None:
            return dict(zip(self._plain_outputs, raw))
        return {spec.name: self._finish(value, spec) for spec, value in zip(self.outputs, raw)}

    def predict_listed(self, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Run samples laid out as in an ``.npz`` of sample data; return the outputs and the sample count.

        An array of the input's own rank is a batch (first axis). An array of one axis more lists
        whole inputs along its first axis (an RNN state ``[N, 2, 1, 128]`` for an input
        ``[2, batch, 128]``, ``[N]`` for a 0-d input): each sample runs on its own, and every
        output gets a first axis of N.

        Raises:
            InputError: As :meth:`predict`, or arrays listing different numbers of samples.
        """
        specs = {t.name: t for t in self.inputs}
        whole = {k for k, v in arrays.items() if k in specs and lists_whole(v, specs[k])}
        if not whole:
            outputs = self.predict(dict(arrays))
            first = next(iter(arrays.values()), np.zeros(0))
            return outputs, (len(first) if np.ndim(first) else 1)
        counts = {len(arrays[k]) for k in whole}
        if len(counts) > 1:
            raise InputError(f"arrays listing whole inputs hold different numbers of samples {sorted(counts)}")
        n = counts.pop()
        runs = [self.predict({k: np.asarray(v[i]) if k in whole else v[i:i + 1] for k, v in arrays.items()})
                for i in range(n)]
        return {name: np.stack([r[name] for r in runs]) for name in runs[0]} if runs else {}, n

    @property
    def version(self) -> str:
        """The bundle's version: the first 12 hex digits of its model file's sha256."""
        return self.manifest.version

    def warm_up(self) -> None:
        """One prediction, so the first real request does not pay for it: on the bundle's golden inputs
        (sizes the model was verified with: a model with dynamic height and width may take no other),
        else on zeros with every dynamic size 1.

        Raises:
            InferenceError: The model fails to run.
        """
        try:
            feeds = self.golden[0] if self.golden is not None else None
        except BundleError:  # the parity check says what is wrong with it
            feeds = None
        if feeds is None:
            feeds = {spec.name: np.zeros(tuple(1 if d is None else d for d in spec.shape),
                                         dtype=np.float32 if spec.takes_floats else spec.dtype) for spec in self.inputs}
        self.predict(feeds)

    @functools.cached_property
    def golden(self) -> tuple[dict[str, np.ndarray], list[np.ndarray]] | None:
        """The bundle's golden inputs and outputs (:func:`.golden.read_golden`), read once for the warm-up and
        the parity check.

        Raises:
            BundleError: ``golden.npz`` is unreadable or does not fit the model.
        """
        return read_golden(self.path, self.manifest)

    def _exact_feeds(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray] | None:
        """The feeds as given when every array is already what the model takes, else None."""
        exact = self._exact
        if len(exact) != len(self.manifest.inputs):
            return None
        if isinstance(inputs, np.ndarray):
            if len(exact) != 1:
                return None
            inputs = {self.manifest.inputs[0].name: inputs}
        elif not isinstance(inputs, dict) or len(inputs) != len(exact):
            return None
        feeds = {}
        batch = None
        for name, array in inputs.items():
            want = exact.get(name)
            if (want is None or type(array) is not np.ndarray or array.dtype != want[1]
                    or len(array.shape) != len(want[2]) or not array.flags.c_contiguous):
                return None
            if want[3] is not None:  # only the batch may vary: one tuple comparison
                if array.shape[1:] != want[3] or (want[2][0] is not None and array.shape[0] != want[2][0]):
                    return None
            elif any(w is not None and g != w for g, w in zip(array.shape, want[2])):
                return None
            if batch is not None and array.shape[0] != batch:
                return None
            batch = array.shape[0]
            feeds[want[0]] = array
        return feeds

    def check(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        """``inputs`` as arrays keyed by input name, once each is checked against the model.

        A batcher checks every request with this before it joins a batch: concatenated,
        a wrong dtype would be cast along with the right ones and pass.

        Raises:
            InputError: As for :meth:`predict`.
        """
        checked = self._checked(inputs)
        return {spec.name: array for spec, array in zip(self.inputs, checked)}

    def _prepare(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        return {spec.model_name: _to_model_dtype(array, spec) for spec, array in zip(self.inputs, self._checked(inputs))}

    def _checked(self, inputs: Mapping[str, Any] | np.ndarray) -> list[np.ndarray]:
        """One array per model input, in the model's order, each checked against its spec."""
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(t.name for t in self.inputs)
                raise InputError(f"this model takes {len(self.inputs)} inputs ({names}): pass a dict keyed by name")
            inputs = {self.inputs[0].name: inputs}
        expected = {t.name for t in self.inputs}
        unknown = sorted(set(inputs) - expected)
        missing = sorted(expected - set(inputs))
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(unknown)}")
            want = "; ".join(t.describe() for t in self.inputs)
            raise InputError(f"inputs do not match the model ({'; '.join(parts)}): expected {want}")
        arrays: list[np.ndarray] = []
        batches = set()
        for spec in self.inputs:
            try:
                array = np.asarray(inputs[spec.name])
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {spec.name} is not an array of numbers ({exc})") from None
            problem = check_array(array, spec)
            if problem:
                raise InputError(problem)
            if array.ndim and spec.shape[0] in (None, 1):  # (a fixed first axis of 2 or more is not a batch)
                batches.add(array.shape[0])
            arrays.append(array)
        if len(batches) > 1:
            raise InputError(f"inputs have different batch sizes {sorted(batches)}: give every input the same first axis")
        return arrays

    @staticmethod
    def _finish(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
        if spec.quantization is not None and spec.dtype in QUANTIZED:
            return dequantize(value, spec)
        if value.dtype == np.float16:
            return value.astype(np.float32)
        return value


def _check_agreement(manifest: Manifest, backend: Backend) -> None:
    """The manifest describes the model file: its input names and dtypes, its number of outputs.

    Raises:
        BundleError: They disagree (an edited manifest, or another model file).
    """
    file = manifest.model_file
    for spec in manifest.inputs:
        actual = backend.input_types.get(spec.model_name)
        if actual is None:
            raise BundleError(f"manifest.json names input {spec.model_name!r}, which {file} does not have (it has "
                              f"{', '.join(backend.input_types) or 'none'}): the bundle was edited or damaged")
        if actual != spec.dtype:
            raise BundleError(f"manifest.json says input {spec.model_name!r} is {spec.dtype}, but {file} takes "
                              f"{actual}: the bundle was edited or damaged")
    if len(backend.input_types) != len(manifest.inputs) or len(backend.output_names) != len(manifest.outputs):
        raise BundleError(f"manifest.json lists {len(manifest.inputs)} inputs and {len(manifest.outputs)} outputs, "
                          f"{file} has {len(backend.input_types)} and {len(backend.output_names)}: the bundle was "
                          "edited or damaged")


def _to_model_dtype(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is not None and spec.dtype in QUANTIZED:
        return quantize(array, spec)
    target = np.dtype(spec.dtype)
    if array.dtype.kind in "iu" and target.kind in "iu" and array.size and target != array.dtype:
        # TFLite takes int64 token ids as int32: narrow only what fits.
        info = np.iinfo(target)
        lo, hi = int(array.min()), int(array.max())
        if lo < info.min or hi > info.max:
            raise InputError(f"input {spec.name} has values in [{lo}, {hi}], outside {spec.dtype}: "
                             f"expected {spec.describe()}")
    return np.ascontiguousarray(array, dtype=target)


def load(bundle: str | Path, *, threads: int | None = None, verify: bool = True, lean: bool = False) -> LoadedModel:
    """Load a bundle written by ``edgec convert``.

    Every file's sha256 is checked before the model is opened. The backend comes from the
    manifest's format; threads and execution providers from its device profile.

    Args:
        bundle: The bundle folder.
        threads: Override the profile's thread count (e.g. to measure on another host).
        verify: Check sha256 sums (leave on outside of benchmarks).
        lean: Trade a little speed for memory (no onnxruntime arena): for memory budgets.

    Returns:
        A :class:`LoadedModel` whose ``predict`` takes and returns float arrays.

    Raises:
        BundleError: Not a bundle, a malformed manifest, or a model its backend refuses.
        IntegrityError: A file does not match its sha256.
        MissingDependencyError: The backend's runtime is not installed.

    Example:
        >>> model = load("build/rpi4")
        >>> model.predict({"input": x})["output"].argmax(1)
    """
    start = time.perf_counter()
    path = Path(bundle)
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    options = BackendOptions(threads=threads or manifest.threads, providers=manifest.execution_providers,
                             lean=lean, exact_int8=manifest.weight_bits != 7)
    backend = open_backend(manifest.format, path / manifest.model_file, options)
    return LoadedModel(path, manifest, backend, time.perf_counter() - start)
