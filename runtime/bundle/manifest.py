"""The bundle manifest: the contract between the SDK that writes a bundle and the runtime.

A bundle is a folder holding the model file, ``manifest.json`` and the reports. The
manifest says everything the runtime needs to feed the model correctly: format, precision,
every input and output (name, shape, dtype, quantization), the providers to try, and the
sha256 of every other file. This module is plain Python + numpy so it runs on the board.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BundleError, IntegrityError
from ...formats import FORMATS, PRECISIONS
from .tensors import DTYPES, QUANTIZED, TensorSpec

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle.

    ``weight_bits`` is 7 for int8 weights quantized to a reduced range: x86 CPUs without
    VNNI then run them exactly on onnxruntime's fast kernels. Other int8 models run there
    on its exact (slower) kernels.
    """

    format: str
    precision: str
    model_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: dict[str, Any]
    files: dict[str, str]
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weight_bits: int | None = None
    release: int | None = None  # set when signed (edgec sign): a board refuses one older than it accepted
    schema_version: int = SCHEMA_VERSION

    @property
    def threads(self) -> int:
        """The profile's thread count, at most twice the cores of this machine (more only thrash)."""
        return min(int(self.device.get("threads", 1)), 2 * (os.cpu_count() or 1))

    @property
    def execution_providers(self) -> tuple[str, ...]:
        return tuple(self.device.get("execution_providers", ("CPUExecutionProvider",)))

    @property
    def version(self) -> str:
        """The bundle's version: the first 12 hex digits of its model file's sha256."""
        return self.files.get(self.model_file, "unknown")[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "format": self.format,
            "precision": self.precision,
            "model_file": self.model_file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "device": self.device,
            "files": self.files,
            "versions": self.versions,
            "metrics": self.metrics,
            **({"weight_bits": self.weight_bits} if self.weight_bits is not None else {}),
            **({"release": self.release} if self.release is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate a manifest's every field, then build it.

        A manifest is checked before any backend sees it: types, ranges, names and sizes, so
        an edited or damaged one is refused with the field and the reason, never a crash.

        Raises:
            BundleError: The manifest is of another schema version, or a field is missing or
                out of range.
        """
        _check_manifest(data)
        return cls(
            format=data["format"], precision=data["precision"], model_file=data["model_file"],
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            device=dict(data["device"]), files=dict(data["files"]), versions=dict(data.get("versions") or {}),
            metrics=dict(data.get("metrics") or {}), weight_bits=data.get("weight_bits"),
            release=data.get("release"), schema_version=data["schema_version"],
        )

    def write(self, bundle: Path) -> Path:
        path = Path(bundle) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: str | Path) -> Manifest:
    """Read ``manifest.json`` from a bundle folder.

    Raises:
        BundleError: No such folder, no manifest, or a manifest that does not parse.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(
            f"{bundle} is not a bundle folder: pass the --out folder written by `edgec convert`"
        )
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle} has no {MANIFEST_NAME}: it is not an edgec bundle")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    return Manifest.from_dict(data)


def verify_files(bundle: str | Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its sha256.

    Raises:
        IntegrityError: A file is missing or its content changed since the bundle was made.
    """
    bundle = Path(bundle).resolve()
    if manifest.model_file not in manifest.files:
        raise IntegrityError(f"manifest lists no sha256 for its model file {manifest.model_file}")
    for name, expected in manifest.files.items():
        path = (bundle / name).resolve()
        if bundle not in path.parents:
            raise IntegrityError(f"manifest names a file outside the bundle: {name!r}")
        if not path.is_file():
            raise IntegrityError(f"bundle file {name} is missing from {bundle}")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"bundle file {name} does not match its sha256 in the manifest "
                f"(expected {expected[:12]}..., found {actual[:12]}...): the file was changed "
                "or damaged; copy the bundle again or rebuild it"
            )


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PROVIDER = re.compile(r"^[A-Za-z0-9]+ExecutionProvider$")
MAX_TENSORS = 64
MAX_RANK = 8
MAX_NAME = 256
MAX_THREADS = 1024  # a profile's; the runtime uses at most twice the cores of the board it runs on


class _Invalid(Exception):
    """One manifest field that is wrong, and why."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise _Invalid(message)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_name(value: Any) -> bool:
    """A file name inside the bundle: no folders, no way out."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_NAME and value not in (".", "..")
            and not any(c in value for c in "/\\\0"))


def _check_manifest(data: Any) -> None:
    """Raise BundleError naming the first field of ``data`` that a runtime must not trust."""
    try:
        _require(isinstance(data, dict), "is not a JSON object")
        version = data.get("schema_version", 0)
        if version != SCHEMA_VERSION:
            raise BundleError(f"manifest schema version {version!r} is not supported by this edgec (expects "
                              f"{SCHEMA_VERSION}): rebuild the bundle with this edgec version")
        for key in ("format", "precision", "model_file", "inputs", "outputs", "device", "files"):
            _require(key in data, f"{key} is missing")
        _require(data["format"] in FORMATS, f"format {data['format']!r} is not one this runtime serves "
                                            f"({', '.join(FORMATS)})")
        _require(data["precision"] in PRECISIONS, f"precision {data['precision']!r} is not one of {', '.join(PRECISIONS)}")
        files = data["files"]
        _require(isinstance(files, dict) and len(files) <= 64, "files must be an object of file name -> sha256")
        for name, digest in files.items():
            _require(_plain_name(name), f"files names {name!r}, which is not a plain file name in the bundle")
            _require(isinstance(digest, str) and bool(_SHA256.match(digest)),
                     f"files[{name!r}] is not a sha256 (64 lowercase hex digits)")
        model_file = data["model_file"]
        _require(_plain_name(model_file), f"model_file {model_file!r} is not a plain file name in the bundle")
        suffix = FORMATS[data["format"]].suffix
        _require(model_file.endswith(suffix), f"model_file {model_file!r} is not a {data['format']} file ({suffix})")
        _require(model_file in files, f"files lists no sha256 for the model file {model_file}")
        for side in ("inputs", "outputs"):
            tensors = data[side]
            _require(isinstance(tensors, list) and 0 < len(tensors) <= MAX_TENSORS,
                     f"{side} must be a list of 1 to {MAX_TENSORS} tensors")
            names = [_check_tensor(t, f"{side}[{i}]") for i, t in enumerate(tensors)]
            _require(len(set(names)) == len(names), f"{side} names a tensor twice")
        _check_device(data["device"])
        _require(data.get("weight_bits") in (None, 7, 8), f"weight_bits {data.get('weight_bits')!r} must be 7 or 8")
        release = data.get("release")
        _require(release is None or (_int(release) and 0 <= release < 2**53),
                 f"release {str(release)[:40]!r} must be a whole number from 0 to 2**53")
        for key in ("versions", "metrics"):
            _require(isinstance(data.get(key) or {}, dict), f"{key} must be a JSON object")
    except _Invalid as exc:
        raise BundleError(f"manifest.json: {exc}: the bundle was edited or damaged; rebuild it with edgec convert") from None


def _check_tensor(tensor: Any, where: str) -> str:
    _require(isinstance(tensor, dict), f"{where} is not an object")
    name = tensor.get("name")
    _require(isinstance(name, str) and 0 < len(name) <= MAX_NAME, f"{where}.name must be a non-empty string")
    shape = tensor.get("shape")
    _require(isinstance(shape, list) and len(shape) <= MAX_RANK
             and all(d is None or (_int(d) and 0 <= d < 2**31) for d in shape),
             f"{where}.shape must be a list of at most {MAX_RANK} dimensions (non-negative integers or null)")
    dtype = tensor.get("dtype")
    _require(dtype in DTYPES, f"{where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    tensor_name = tensor.get("tensor")
    _require(tensor_name is None or (isinstance(tensor_name, str) and 0 < len(tensor_name) <= MAX_NAME),
             f"{where}.tensor must be a string")
    q = tensor.get("quantization")
    if q is not None:
        _require(dtype in QUANTIZED, f"{where} has quantization but dtype {dtype}: only {', '.join(QUANTIZED)} do")
        _require(isinstance(q, dict), f"{where}.quantization must be an object")
        scale, zero = q.get("scale"), q.get("zero_point")
        _require(isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0,
                 f"{where}.quantization.scale must be a finite number above 0, got {scale!r}")
        info = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}[dtype]
        _require(_int(zero) and info[0] <= zero <= info[1],
                 f"{where}.quantization.zero_point must be an integer in [{info[0]}, {info[1]}], got {zero!r}")
    return name


def _check_device(device: Any) -> None:
    _require(isinstance(device, dict), "device must be an object")
    threads = device.get("threads", 1)
    _require(_int(threads) and 1 <= threads <= MAX_THREADS,
             f"device.threads {threads!r} must be a whole number from 1 to {MAX_THREADS}")
    providers = device.get("execution_providers", ["CPUExecutionProvider"])
    _require(isinstance(providers, list) and 0 < len(providers) <= 16
             and all(isinstance(p, str) and _PROVIDER.match(p) for p in providers),
             "device.execution_providers must be a list of onnxruntime provider names (...ExecutionProvider)")
