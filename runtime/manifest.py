"""The bundle manifest: the contract between the SDK that writes a bundle and the runtime.

A bundle is a folder holding the model file, ``manifest.json`` and the reports. The
manifest says everything the runtime needs to feed the model correctly: format, precision,
every input and output (name, shape, dtype, quantization), the providers to try, and the
sha256 of every other file. This module is plain Python + numpy so it runs on the board.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError, IntegrityError
from .tensors import TensorSpec

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
    schema_version: int = SCHEMA_VERSION

    @property
    def threads(self) -> int:
        return int(self.device.get("threads", 1))

    @property
    def execution_providers(self) -> tuple[str, ...]:
        return tuple(self.device.get("execution_providers", ("CPUExecutionProvider",)))

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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            version = int(data.get("schema_version", 0))
            if version != SCHEMA_VERSION:
                raise BundleError(
                    f"manifest schema version {version} is not supported by this edgec "
                    f"(expects {SCHEMA_VERSION}): rebuild the bundle with this edgec version"
                )
            return cls(
                format=str(data["format"]),
                precision=str(data["precision"]),
                model_file=str(data["model_file"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                device=dict(data["device"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                versions=dict(data.get("versions", {})),
                metrics=dict(data.get("metrics", {})),
                weight_bits=int(data["weight_bits"]) if data.get("weight_bits") is not None else None,
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest is malformed ({type(exc).__name__}: {exc})") from None

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
