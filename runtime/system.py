"""Readings of the board itself: this process's memory and CPU, free memory, CPU temperature.

Linux ``/proc`` and ``/sys`` first, psutil where it is installed; every reading returns
``None`` where the board cannot tell rather than guessing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path


def rss_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``; psutil elsewhere; None without either)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int | None:
    """The most resident memory this process has held (``VmHWM``; ``ru_maxrss`` elsewhere; None without either)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux
    except (ImportError, OSError):
        return None


def available_bytes() -> int | None:
    """Memory the system can still give (psutil), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def release_freed_memory() -> None:
    """Hand memory freed by an evicted model back to the OS (glibc keeps it otherwise).

    Without this, RSS after an eviction stays at its peak and the next load pushes the
    process past its budget although the model's memory was freed.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def cpu_temperature_c() -> float | None:
    """The CPU's temperature from ``/sys/class/thermal``, where the board exposes one."""
    base = Path("/sys/class/thermal")
    best = None
    for zone in sorted(base.glob("thermal_zone*")) if base.exists() else []:
        try:
            kind = (zone / "type").read_text().strip().lower()
            value = int((zone / "temp").read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
        if any(k in kind for k in ("cpu", "soc", "x86_pkg", "core")):
            return value
        best = value if best is None else best
    return best


class CpuMeter:
    """Process CPU % since the previous reading (100 = one core busy)."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())

    def read(self) -> float:
        now = (time.monotonic(), time.process_time())
        wall = now[0] - self._last[0]
        used = now[1] - self._last[1]
        self._last = now
        return round(100 * used / wall, 1) if wall > 0 else 0.0


class MemoryPressure:
    """Whether the board has less free memory than ``min_available_bytes``, read sparingly.

    Every batch asks; reading the system's memory costs tens of microseconds, more than a
    small model's whole run, and memory does not run out that fast: a reading is reused for
    ``every_s`` seconds.

    Args:
        min_available_bytes: Below this much free memory the board is short (``None``: never).
        every_s: How stale a reading may be.
        read: Reads the free memory (default :func:`available_bytes`).
        clock: A monotonic clock in seconds.
    """

    def __init__(self, min_available_bytes: int | None, *, every_s: float = 0.05,
                 read: Callable[[], int | None] = available_bytes,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_available_bytes = min_available_bytes
        self.every_s = every_s
        self.readings = 0
        self._read = read
        self._clock = clock
        self._last = (-math.inf, False)  # (when, short of memory)

    def __call__(self) -> bool:
        if self.min_available_bytes is None:
            return False
        now = self._clock()
        at, short = self._last
        if now - at >= self.every_s:
            avail = self._read()
            self.readings += 1
            short = avail is not None and avail < self.min_available_bytes
            self._last = (now, short)
        return short


def host_arch(machine: str | None = None) -> str:
    """This machine's (or ``machine``'s) CPU architecture as device profiles name it (``x86_64``, ``aarch64``)."""
    import platform

    machine = (machine or platform.machine()).lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


# Packages whose versions decide how a board runs a model, by distribution name (read without importing).
RUNTIME_PACKAGES = ("edgec", "numpy", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "tflite-runtime",
                    "tensorflow")


def board_info() -> dict[str, object]:
    """What this machine is, for a measurement's record: board and CPU model, cores, memory, runtime versions."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in RUNTIME_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {"board": _device_tree_model(), "cpu": cpu_model(), "arch": host_arch(), "cores": os.cpu_count(),
            "memory_bytes": total, "system": f"{platform.system()} {platform.release()}", "versions": versions}


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The CPU's name from ``/proc/cpuinfo``: x86's ``model name``; on ARM the core named by its part number."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            import platform

            return platform.processor() or None
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    part = ARM_PARTS.get((fields.get("cpu implementer", ""), fields.get("cpu part", "")))
    if part:
        return part
    return fields.get("hardware") or fields.get("model") or None


# (implementer, part) as /proc/cpuinfo prints them on ARM, for the cores edge boards use.
ARM_PARTS = {("0x41", "0xd03"): "ARM Cortex-A53", ("0x41", "0xd04"): "ARM Cortex-A35",
             ("0x41", "0xd05"): "ARM Cortex-A55", ("0x41", "0xd07"): "ARM Cortex-A57",
             ("0x41", "0xd08"): "ARM Cortex-A72", ("0x41", "0xd09"): "ARM Cortex-A73",
             ("0x41", "0xd0a"): "ARM Cortex-A75", ("0x41", "0xd0b"): "ARM Cortex-A76",
             ("0x41", "0xd0c"): "ARM Neoverse-N1", ("0x41", "0xd41"): "ARM Cortex-A78",
             ("0x41", "0xd42"): "ARM Cortex-A78AE", ("0x41", "0xd4b"): "ARM Cortex-A78C"}


def _device_tree_model() -> str | None:
    """The board's own name where its firmware gives one (``Raspberry Pi 4 Model B Rev 1.4``, Jetson boards)."""
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None
