"""The conversion report (``report.json``), built in one place from what each stage measured.

Every number in it was measured on this host, or on the board named in its ``board`` entry; the Markdown page (:mod:`.markdown`) and the
terminal tables (:mod:`.terminal`) only render this dict.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ...converters.base import Source
from ...devices import DeviceProfile
from ...formats import get_format
from ..verify.fidelity import Fidelity
from ...runtime.timing import Latency


@dataclass(frozen=True)
class Measurements:
    """Size, speed and memory of the shipped artifact against its references, on this host.

    Attributes:
        source: The original model's single-sample latency.
        fp32: The fp32 artifact's latency (``None`` when fp32 is what ships).
        final: The shipped artifact's latency.
        speedup: Shipped vs fp32 artifact, timed in alternating rounds (1.0 when fp32 ships).
        fp32_size: Bytes of the fp32 artifact.
        size: Bytes of the shipped artifact.
        ram_delta: RSS that loading and running the shipped artifact added.
        threads: Threads every model ran with.
        board: The fp32 and shipped artifacts as a board measured them (``--measure-on``), and the board.
    """

    source: Latency
    fp32: Latency | None
    final: Latency
    speedup: float
    fp32_size: int
    size: int
    ram_delta: int | None
    threads: int
    board: dict[str, Any] | None = None


def build_report(*, source: Source, profile: DeviceProfile, fmt: str, precision: str, reason: str,
                 format_reason: str = "asked for with --format",
                 recipe: dict[str, Any], data: dict[str, Any], warnings: list[str], fp32: Fidelity | None,
                 final: Fidelity, reference_accuracy: float | None, checks: list[str], budget: str,
                 search: dict[str, Any] | None, measured: Measurements, timings: dict[str, float],
                 versions: dict[str, str]) -> dict[str, Any]:
    """The report of one conversion, as written to ``report.json``."""
    fit_problems = profile.fit_problems(measured.size, measured.ram_delta)
    rows = [{"name": f"original ({source.kind})", "size_bytes": source.size_bytes,
             "latency": measured.source.to_dict(), "fidelity": None, "accuracy": reference_accuracy}]
    if fp32 is not None and measured.fp32 is not None:
        rows.append({"name": f"{fmt} fp32", "size_bytes": measured.fp32_size, "latency": measured.fp32.to_dict(),
                     "fidelity": fp32.to_dict(), "accuracy": fp32.accuracy})
    rows.append({"name": f"{fmt} {precision}", "size_bytes": measured.size, "latency": measured.final.to_dict(),
                 "fidelity": final.to_dict(), "accuracy": final.accuracy, "shipped": True})
    drop = (100 * (reference_accuracy - final.accuracy)
            if reference_accuracy is not None and final.accuracy is not None else None)
    return {
        "edgec_version": versions["edgec"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": source.label, "kind": source.kind, "inputs": [t.to_dict() for t in source.inputs],
                  "outputs": [t.to_dict() for t in source.outputs],
                  **({"prepared": data["graph"]} if "graph" in data else {})},
        "device": {"name": profile.name, "description": profile.description, "threads": profile.threads},
        "target": {"format": fmt, "format_reason": format_reason, "precision": precision, "precision_reason": reason,
                   "recipe": recipe},
        "data": {**{k: v for k, v in data.items() if k != "graph"},
                 "warnings": [w for w in warnings if w not in fit_problems]},
        "results": rows,
        "summary": {
            "size_bytes": measured.size,
            "size_vs_fp32": measured.size / measured.fp32_size,
            "size_vs_original": measured.size / source.size_bytes if source.size_bytes else None,
            "speedup_vs_fp32": measured.speedup,
            "speedup_vs_original": measured.source.p50_ms / measured.final.p50_ms,
            "accuracy_drop_points": drop,
            "accuracy_change_points": -drop if drop is not None else None,
            "task": final.task.to_dict() if final.task is not None else None,
        },
        "verification": {"passed": True, "checks": checks, "budget": budget},
        "search": search,
        "fit": {"size_bytes": measured.size, "storage_mb": profile.storage_mb, "ram_delta_bytes": measured.ram_delta,
                "model_ram_mb": profile.model_ram_mb, "fits": not fit_problems, "problems": fit_problems},
        "notes": notes(profile, fmt, precision),
        "host": {"machine": platform.machine(), "threads": measured.threads, "cpu_count": os.cpu_count()},
        "board": measured.board,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": versions,
    }


def notes(profile: DeviceProfile, fmt: str, precision: str) -> list[str]:
    """What a person deploying this artifact on this board should know."""
    found = []
    if profile.accelerator == "edgetpu":
        found.append("this full-integer model runs on the CPU as is; run `edgetpu_compiler model.tflite` "
                     "to map its ops to the Edge TPU")
    if precision == "fp16" and not profile.fp16_speedup:
        found.append(f"{profile.name} has no fast fp16 arithmetic: fp16 halves the file but does not speed it up")
    if precision == "int8" and not profile.int8_speedup:
        found.append(f"{profile.name} has no fast int8 kernels: int8 shrinks the file but may not speed it up")
    if get_format(fmt).batch_of_one:
        found.append(f"the {fmt} model takes a batch of 1; the edgec runtime serves larger batches sample by sample")
    return found
