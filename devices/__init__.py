"""Device profiles: data files in ``profiles/*.toml`` loaded into frozen :class:`DeviceProfile`.

Capabilities are fields, never ``if device == ...`` branches. A name resolves through the
profile names and their aliases (``jetson`` -> ``jetson-orin-nano``); a mistyped name fails
with the nearest names suggested.

Example:
    >>> from edgec.devices import get_profile
    >>> get_profile("rpi").name
    'rpi4'
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import MISSING, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..formats import FORMATS, PRECISIONS
from ..errors import DeviceNotFoundError, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES_DIR = Path(__file__).parent / "profiles"
ACCELERATORS = ("none", "cuda", "edgetpu")


@dataclass(frozen=True)
class DeviceProfile:
    """What edgec needs to know about one board.

    Attributes:
        name: Canonical name (``rpi4``).
        description: One line for people.
        family: Board family (``rpi``, ``jetson``...).
        aliases: Other names that resolve to this profile.
        arch: CPU architecture (``aarch64``, ``x86_64``), recorded in the manifest.
        cores: CPU cores.
        threads: Inference threads the runtime uses on this board.
        ram_mb: Board RAM.
        model_ram_mb: RAM the models may use; a bundle whose model needs more fails the fit check.
        storage_mb: Storage one bundle may take.
        accelerator: ``none``, ``cuda`` or ``edgetpu``.
        format: Preferred target format (``--format auto``).
        formats: Every format the board runs, preferred first (default: ``format`` alone).
            ``--format auto`` takes the first one the model can be converted to: an ONNX
            model for a Raspberry Pi goes to ONNX on onnxruntime, which runs there too.
        precision: Preferred precision (``--precision auto``).
        allowed_precisions: Precisions the board can run at all.
        int8_speedup: Whether int8 kernels beat float ones on this board.
        fp16_speedup: Whether fp16 arithmetic beats fp32 on this board.
        int8_io: Whether int8 artifacts take and give int8 tensors (full-integer I/O).
        int8_reduce_range: Quantize int8 weights to 7 bits. x86 CPUs without VNNI (AVX2,
            AVX-512F) add pairs of u8 x s8 products in 16 bits, which saturates with full-range
            weights; 7-bit weights keep onnxruntime's fast kernels exact there.
        execution_providers: onnxruntime providers to try, in order.
        compute_capability: CUDA compute capability, when there is a CUDA GPU.
        batch: The batch the board's runtime runs under load (``edgec serve``'s ``max_batch_size``); boards
            measuring candidates (``--measure-on``) time it besides batch 1.
        source: The file the profile was read from.
    """

    name: str
    description: str
    family: str
    aliases: tuple[str, ...]
    arch: str
    cores: int
    threads: int
    ram_mb: int
    model_ram_mb: int
    storage_mb: int
    accelerator: str
    format: str
    precision: str
    allowed_precisions: tuple[str, ...]
    int8_speedup: bool
    fp16_speedup: bool
    int8_io: bool
    execution_providers: tuple[str, ...]
    int8_reduce_range: bool = False
    formats: tuple[str, ...] = ()
    compute_capability: str | None = None
    batch: int = 8
    source: str = ""

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r} ({self.source or 'in memory'})"
        if not self.formats:
            object.__setattr__(self, "formats", (self.format,))
        for fmt in (self.format, *self.formats):
            if fmt not in FORMATS:
                raise ValidationError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        if self.formats[0] != self.format:
            raise ValidationError(f"{where}: formats {list(self.formats)} must start with the preferred format "
                                  f"{self.format!r}")
        for p in (self.precision, *self.allowed_precisions):
            if p not in PRECISIONS:
                raise ValidationError(
                    f"{where}: precision {p!r} is not one of {', '.join(PRECISIONS)}"
                )
        if self.precision not in self.allowed_precisions:
            raise ValidationError(
                f"{where}: preferred precision {self.precision!r} is not in "
                f"allowed_precisions {list(self.allowed_precisions)}"
            )
        if self.accelerator not in ACCELERATORS:
            raise ValidationError(
                f"{where}: accelerator {self.accelerator!r} is not one of {', '.join(ACCELERATORS)}"
            )
        for field in ("cores", "threads", "ram_mb", "model_ram_mb", "storage_mb", "batch"):
            if getattr(self, field) <= 0:
                raise ValidationError(f"{where}: {field} must be a positive number")
        if self.model_ram_mb > self.ram_mb:
            raise ValidationError(f"{where}: model_ram_mb is larger than ram_mb")
        if not self.execution_providers:
            raise ValidationError(f"{where}: execution_providers must name at least one")

    def timed_here(self, machine: str | None = None) -> bool:
        """Whether this host's timings stand for the board's: a CPU board of this host's architecture.

        A GPU, NPU or Edge TPU board, or a CPU of another architecture (an A72 timed on an x86
        host), runs other kernels: there the choice of precision rests on the profile's
        declared ``int8_speedup``/``fp16_speedup``, and host timings are only reported.
        """
        from ..runtime.system import host_arch

        return self.accelerator == "none" and host_arch(self.arch.replace("-", "_")) == host_arch(machine)

    @classmethod
    def from_toml(cls, path: str | Path) -> DeviceProfile:
        """Read a profile file.

        Raises:
            ValidationError: The file is not valid TOML or misses a required field.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DeviceNotFoundError(f"profile file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError(f"profile file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "") -> DeviceProfile:
        """Build a profile from the nested TOML layout (``[cpu]``, ``[memory]``, ...)."""
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        if flat.get("accelerator") is None and "kind" in flat:
            flat["accelerator"] = flat.pop("kind")
        flat.pop("kind", None)
        flat.setdefault("allowed_precisions", list(PRECISIONS))
        flat.setdefault("aliases", [])
        flat.setdefault("family", flat.get("name", ""))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        name = flat.get("name", "?")
        if unknown:
            close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            hints = ", ".join(f"{u}" + (f" (did you mean {c[0]}?)" if c else "") for u, c in close.items())
            raise ValidationError(f"device profile {name!r} ({source}): unknown fields {hints}")
        missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.name not in flat)
        if missing:
            raise ValidationError(
                f"device profile {name!r} ({source}): missing fields {', '.join(missing)}"
            )
        for key in ("aliases", "allowed_precisions", "execution_providers", "formats"):
            flat[key] = tuple(flat.get(key, ()))
        return cls(**flat, source=source)

    def fit_problems(self, size_bytes: int, ram_bytes: int | None) -> list[str]:
        """Why a model of this file size, adding this much RAM when loaded, does not fit the board.

        Returns:
            One sentence per problem; empty when it fits.
        """
        problems = []
        if size_bytes > self.storage_mb * 2**20:
            problems.append(f"the model file is {size_bytes / 2**20:.1f} MB, over {self.name}'s {self.storage_mb} MB "
                            "storage budget")
        if ram_bytes is not None and ram_bytes > self.model_ram_mb * 2**20:
            problems.append(f"loading the model added {ram_bytes / 2**20:.0f} MB of RAM, over {self.name}'s "
                            f"{self.model_ram_mb} MB model budget")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (for manifests and reports)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("aliases", "allowed_precisions", "execution_providers", "formats"):
            out[key] = list(out[key])
        out.pop("source")
        return out


@lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, DeviceProfile]:
    """Every profile shipped with edgec, by canonical name."""
    profiles = {}
    for path in sorted(PROFILES_DIR.glob("*.toml")):
        profile = DeviceProfile.from_toml(path)
        profiles[profile.name] = profile
    return profiles


def _names() -> dict[str, str]:
    """Every name and alias -> canonical name."""
    names: dict[str, str] = {}
    for profile in builtin_profiles().values():
        names[profile.name] = profile.name
        for alias in profile.aliases:
            names.setdefault(alias, profile.name)
    return names


def get_profile(name_or_path: str | Path) -> DeviceProfile:
    """Resolve a device name, alias or ``.toml`` profile path.

    Args:
        name_or_path: ``rpi4``, ``jetson`` or ``path/to/board.toml``.

    Returns:
        The profile.

    Raises:
        DeviceNotFoundError: No profile by that name; the message suggests the nearest names.
    """
    text = str(name_or_path)
    if text.endswith(".toml"):
        return DeviceProfile.from_toml(text)
    names = _names()
    key = text.strip().lower()
    if key in names:
        return builtin_profiles()[names[key]]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise DeviceNotFoundError(
        f"unknown device {text!r}: {hint}run `edgec devices` for the list, "
        "or pass your own profile with --profile board.toml"
    )
