"""What a device profile needs from the machine that runs its bundles, held against what ``edgec doctor`` found."""

from __future__ import annotations

import importlib
import platform

from ..runtime.doctor import Check, cpu_flags
from ..runtime.system import host_arch
from . import DeviceProfile

# How to get each execution provider where a profile asks for it.
PROVIDER_FIX = {
    "TensorrtExecutionProvider": "on the Jetson, install NVIDIA's onnxruntime-gpu wheel for your JetPack "
                                 "(Jetson Zoo); on a PC: pip install onnxruntime-gpu and TensorRT",
    "CUDAExecutionProvider": "on the Jetson, install NVIDIA's onnxruntime-gpu wheel for your JetPack (Jetson Zoo); "
                             "on a PC with an NVIDIA GPU: pip install onnxruntime-gpu in place of onnxruntime",
}


def device_checks(profile: DeviceProfile) -> list[Check]:
    """Whether this machine runs ``profile``'s bundles as the board would, and what to install if not.

    On another architecture (converting on a PC for a Pi) it says so: those checks are for the board.
    """
    here = host_arch()
    area = f"device {profile.name}"
    checks = [Check(area, "architecture", None if here != profile.arch else True,
                    f"this machine is {here}; {profile.name} is {profile.arch}" +
                    ("" if here == profile.arch else ": convert here, then run these checks on the board"))]
    if profile.format == "tflite" or "tflite" in profile.formats:
        checks.append(_importable(area, "TFLite interpreter", ("ai_edge_litert.interpreter",
                                                               "tflite_runtime.interpreter"),
                                  "pip install 'edgec[runtime]'", needed=profile.format == "tflite"))
    if profile.format == "onnx" or "onnx" in profile.formats:
        checks.append(_importable(area, "onnxruntime", ("onnxruntime",),
                                  PROVIDER_FIX["CUDAExecutionProvider"] if profile.family == "jetson"
                                  else "pip install 'edgec[runtime]'", needed=profile.format == "onnx"))
        try:
            available = set(importlib.import_module("onnxruntime").get_available_providers())
        except ImportError:
            available = set()
        for provider in profile.execution_providers:
            if provider == "CPUExecutionProvider":
                continue
            checks.append(Check(area, provider, provider in available,
                                "available" if provider in available else "not in this onnxruntime build: "
                                "bundles run on the CPU here", "" if provider in available else
                                PROVIDER_FIX.get(provider, f"an onnxruntime build with {provider}")))
    if profile.accelerator == "edgetpu":
        import ctypes.util

        found = ctypes.util.find_library("edgetpu")
        checks.append(Check(area, "libedgetpu", bool(found), found or "not installed",
                            "" if found else "apt-get install libedgetpu1-std (Coral's apt repository)"))
    if here == profile.arch and profile.int8_speedup:
        checks.append(_int8(area, here, cpu_flags()))
    if here != profile.arch:  # what the board will need, not a fault of this machine's
        checks[1:] = [Check(c.area, c.what, None, f"{c.detail} (the board needs it)", c.fix) if c.ok is False else c
                      for c in checks[1:]]
    return checks


def _importable(area: str, what: str, modules: tuple[str, ...], fix: str, *, needed: bool) -> Check:
    for module in modules:
        try:
            importlib.import_module(module)
            return Check(area, what, True, f"{module.split('.')[0]} installed")
        except ImportError:
            continue
    return Check(area, what, False if needed else None, "not installed", fix)


def _int8(area: str, arch: str, flags: set[str]) -> Check:
    """Whether this CPU has the instructions that make int8 fast (and, on x86, exact)."""
    if arch == "x86_64":
        vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
        return Check(area, "int8 kernels", True if vnni else None,
                     "VNNI: int8 runs exact and fast" if vnni else
                     "no VNNI: int8 uses 7-bit weights (reduce_range) to stay exact; still faster than fp32")
    dot = "asimddp" in flags
    return Check(area, "int8 kernels", True if dot else None,
                 f"{platform.machine()} with the dot-product instructions: XNNPACK's fast int8" if dot else
                 "no Arm dot product (a Cortex-A72, as on the Pi 4): int8 is still faster than fp32, by less")
