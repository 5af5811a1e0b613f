"""``edgec doctor``: what this machine can do for edgec, found out rather than assumed.

Python and the platform; the CPU and the features its int8 kernels need (VNNI on x86, the
dot-product instructions on Arm); free memory and disk; which of edgec's extras are installed;
onnxruntime's execution providers; the TFLite interpreter; accelerators (NVIDIA GPU, Jetson,
Coral Edge TPU); and whether the MQTT broker answers. Board side: numpy and the standard
library only, every framework probed by import, nothing started but a broker connection.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgecError
from .system import available_bytes, host_arch

# Extras a user installs on purpose (runtime-core, all and dev are parts or bundles of these).
EXTRAS = ("runtime", "sdk", "tf", "jetson", "models")
# CPU flags that decide how fast int8 runs: /proc/cpuinfo names -> what they mean here.
INT8_FEATURES = {
    "avx512_vnni": "AVX-512 VNNI (int8 dot products: exact, fast int8)",
    "avx_vnni": "AVX-VNNI (int8 dot products: exact, fast int8)",
    "avx2": "AVX2",
    "asimddp": "Arm dot product (SDOT/UDOT: fast int8)",
    "i8mm": "Arm int8 matrix multiply (I8MM)",
    "asimdhp": "Arm half-precision arithmetic (fp16)",
}


@dataclass(frozen=True)
class Check:
    """One finding.

    Attributes:
        area: What it is about (``python``, ``cpu``, ``extras``, ``onnxruntime``...).
        what: The thing checked.
        ok: ``True`` fine, ``False`` missing or broken, ``None`` for information.
        detail: What was found.
        fix: What to do about it, when there is something to do.
    """

    area: str
    what: str
    ok: bool | None
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"area": self.area, "what": self.what, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on Arm) from ``/proc/cpuinfo``."""
    if cpuinfo is None:
        cpuinfo = _read(Path("/proc/cpuinfo"), 1_000_000)
    found = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, flags=re.M)
    return set(found.group(1).split()) if found else set()


def _cpu_model() -> str:
    text = _read(Path("/proc/cpuinfo"), 1_000_000)
    found = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", text, flags=re.M)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def machine() -> list[Check]:
    """Python, platform, CPU and its int8 features, memory and disk."""
    flags = cpu_flags()
    features = [name for flag, name in INT8_FEATURES.items() if flag in flags]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    free = available_bytes()
    disk = shutil.disk_usage(Path.cwd())
    ok_python = sys.version_info >= (3, 10)
    return [
        Check("python", "Python", ok_python, f"{platform.python_version()} ({sys.executable})",
              "" if ok_python else "edgec needs Python 3.10 or newer"),
        Check("platform", "system", None, f"{platform.system()} {platform.release()}, {host_arch()}"),
        Check("cpu", "CPU", None, f"{_cpu_model()}, {os.cpu_count()} cores"),
        Check("cpu", "int8 instructions", None, ", ".join(features) or "none of VNNI, AVX2 or Arm dot product"),
        Check("memory", "memory", None, (f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
                                         if free is not None and total else "unknown")),
        Check("disk", "disk", None, f"{disk.free / 2**30:.1f} GiB free in {Path.cwd()}"),
    ]


def _requirements() -> dict[str, list[str]]:
    """edgec's extras and the distributions each needs (nested extras resolved)."""
    try:
        requires = metadata.requires("edgec") or []
    except metadata.PackageNotFoundError:
        return {}
    extras: dict[str, list[str]] = {}
    for line in requires:
        found = re.search(r'extra\s*==\s*"([^"]+)"', line)
        if not found:
            continue
        spec = line.split(";")[0].strip()
        if _marker_false(line):
            continue
        extras.setdefault(found.group(1), []).append(spec)

    def names(extra: str, seen: frozenset[str] = frozenset()) -> list[str]:
        out = []
        for spec in extras.get(extra, []):
            nested = re.match(r"edgec\[([^\]]+)\]", spec)
            if nested:
                for inner in nested.group(1).split(","):
                    if inner not in seen:
                        out += names(inner.strip(), seen | {extra})
            else:
                out.append(re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0])
        return out

    return {extra: names(extra) for extra in extras}


def _marker_false(line: str) -> bool:
    """Whether a requirement's platform marker (other than its extra) rules it out on this machine."""
    marker = line.split(";", 1)[1] if ";" in line else ""
    if "sys_platform" in marker and "win32" in marker and "!=" in marker:
        return sys.platform == "win32"
    if "python_version < '3.11'" in marker.replace('"', "'"):
        return sys.version_info >= (3, 11)
    return False


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def extras() -> list[Check]:
    """Which extras are installed, whole or in part."""
    found = []
    needs = _requirements()
    for extra in EXTRAS:
        wanted = needs.get(extra)
        if not wanted:
            continue
        missing = [d for d in wanted if _installed(d) is None]
        if not missing:
            found.append(Check("extras", f"edgec[{extra}]", True, "installed"))
        else:
            have = len(wanted) - len(missing)
            found.append(Check("extras", f"edgec[{extra}]", None if have == 0 else False,
                               "not installed" if have == 0 else f"missing {', '.join(missing)}",
                               f"pip install 'edgec[{extra}]'"))
    return found


def runtimes() -> list[Check]:
    """onnxruntime and its execution providers; the TFLite interpreter edgec would use."""
    checks = []
    try:
        ort = importlib.import_module("onnxruntime")
        providers = ort.get_available_providers()
        checks.append(Check("onnxruntime", "onnxruntime", True, f"{ort.__version__}: {', '.join(providers)}"))
    except ImportError:
        checks.append(Check("onnxruntime", "onnxruntime", False, "not installed",
                            "pip install 'edgec[runtime]' (on a Jetson: NVIDIA's onnxruntime-gpu for your JetPack)"))
    for module, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter",
                                                                             "tflite-runtime")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        checks.append(Check("tflite", "TFLite interpreter", True, f"{dist} {_installed(dist) or ''}".strip()))
        break
    else:
        checks.append(Check("tflite", "TFLite interpreter", False, "neither ai-edge-litert nor tflite-runtime",
                            "pip install 'edgec[runtime]'"))
    return checks


def accelerators() -> list[Check]:
    """NVIDIA GPUs (and Jetson's JetPack), Coral Edge TPUs: what the system shows, without loading drivers."""
    checks = []
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():
        release = (_read(tegra, 200).splitlines() or ["present"])[0]
        checks.append(Check("accelerator", "Jetson (L4T)", True, release.strip("# ")))
    nvidia = Path("/proc/driver/nvidia/version")
    if nvidia.exists():
        line = (_read(nvidia, 300).splitlines() or ["present"])[0]
        checks.append(Check("accelerator", "NVIDIA driver", True, line.strip()))
    elif not tegra.exists():
        checks.append(Check("accelerator", "NVIDIA GPU", None, "none found"))
    library = ctypes.util.find_library("edgetpu")
    usb = any(_read(p / "idVendor") in ("1a6e", "18d1") and _read(p / "idProduct") in ("089a", "9302")
              for p in Path("/sys/bus/usb/devices").glob("*")) if Path("/sys/bus/usb/devices").is_dir() else False
    pcie = Path("/dev/apex_0").exists()
    if library or usb or pcie:
        where = ", ".join(w for w, there in (("USB", usb), ("PCIe", pcie)) if there) or "no device attached"
        checks.append(Check("accelerator", "Coral Edge TPU", bool(library and (usb or pcie)),
                            f"libedgetpu {'found' if library else 'missing'}; {where}",
                            "" if library else "apt-get install libedgetpu1-std (Coral's apt repository)"))
    else:
        checks.append(Check("accelerator", "Coral Edge TPU", None, "none found"))
    return checks


def _read(path: Path, limit: int = 512) -> str:
    """The start of a small system file (sysfs, /proc, /etc), read no further than ``limit`` bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def broker(host: str, port: int, *, tls: bool = False, username: str | None = None, password: str | None = None,
           ca_file: Path | None = None, timeout_s: float = 5.0) -> Check:
    """Whether an MQTT broker answers a connection (and takes the credentials) within ``timeout_s``."""
    where = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return Check("broker", f"broker {where}", False, f"cannot connect: {exc.strerror or exc}",
                     "check the broker's host and port, and that it is running")
    from .agent.publisher import mqtt_client, open_client

    try:  # the fleet tools' own connection, and its errors
        client = open_client(lambda protocol: mqtt_client(username=username, password=password, tls=tls,
                                                          ca_file=ca_file, protocol=protocol),
                             host, port, timeout_s=timeout_s)
    except (ImportError, OSError) as exc:  # no paho-mqtt (MissingDependencyError), or a CA file that cannot be read
        return Check("broker", f"broker {where}", None, f"the port answers; MQTT not tried: {exc}")
    except EdgecError as exc:
        return Check("broker", f"broker {where}", False, str(exc))
    client.loop_stop()
    client.disconnect()
    speaks = "MQTT 5" if client.protocol == 5 else 'MQTT 3.1.1 only: boards need protocol = "3.1.1" in [telemetry]'
    return Check("broker", f"broker {where}", True, f"connected ({speaks})")


def report() -> list[Check]:
    """Every check that needs nothing but this machine."""
    return machine() + extras() + runtimes() + accelerators()
