"""What a dashboard knows about a fleet: the latest status, telemetry, event and update of every device.

Fed with every message under ``edgec/<fleet>/+/+`` and ``edgec/<fleet>/+/update/+`` (see
:mod:`edgec.runtime.agent` and :mod:`edgec.runtime.updater` for the topics);
``edgec telemetry watch`` draws it as a live table, ``edgec dashboard`` as a web page.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from typing import Any

KINDS = {"status": "status", "telemetry": "telemetry", "events": "event"}
HISTORY = 120  # latency points kept per device and model (20 minutes at the default 10 s)
FORGET_AFTER_S = 24 * 3600  # a device not heard from for this long leaves the view
MAX_DEVICES = 100_000  # past this, new device ids are refused (a flood of fake ones is bounded)
NUMBER_FIELDS = {"process": ("rss_bytes", "cpu_percent", "cpu_temp_c", "uptime_s"),
                 "model": ("requests_per_s", "errors_per_s", "queue_depth"), "spool": ("queued", "dropped")}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def problem(kind: str, message: dict[str, Any]) -> str | None:
    """What is wrong with a message the view would show (wrong types where it reads numbers, text or
    tables), or ``None``. Non-finite numbers never get this far: they are not JSON."""
    def table(value: Any, where: str, fields: tuple[str, ...]) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            return f"{where} is not an object"
        bad = [f for f in fields if not _number(value.get(f))]
        return f"{where}.{bad[0]} is not a number" if bad else None

    if kind == "status" and not isinstance(message.get("state", ""), str):
        return "state is not text"
    if kind == "event" and not isinstance(message.get("message", ""), str):
        return "message is not text"
    if kind == "update" and not isinstance(message.get("state", ""), str):
        return "state is not text"
    if kind != "telemetry":
        return None
    found = table(message.get("process"), "process", NUMBER_FIELDS["process"]) or table(
        message.get("spool"), "spool", NUMBER_FIELDS["spool"])
    if found:
        return found
    if not _number(message.get("time")):
        return "time is not a number"
    models = message.get("models")
    if models is None:
        return None
    if not isinstance(models, dict):
        return "models is not an object"
    for name, m in models.items():
        found = table(m, f"models.{name}", NUMBER_FIELDS["model"])
        if found:
            return found
        latency = m.get("latency_ms")
        if latency is not None and (not isinstance(latency, dict) or not all(_number(v) for v in latency.values())):
            return f"models.{name}.latency_ms is not a table of numbers"
        if not isinstance(m.get("version", ""), (str, type(None))):
            return f"models.{name}.version is not text"
    return None


class FleetView:
    """What a dashboard knows: the latest status, telemetry, event and update state of every device seen.

    Feed it every message under the topics above; malformed ones are counted and skipped.
    ``version`` goes up with every message taken, so a watcher can tell when to redraw.
    """

    def __init__(self, forget_after_s: float = FORGET_AFTER_S) -> None:
        self.devices: dict[tuple[str, str], dict[str, Any]] = {}
        self.malformed = 0
        self.last_malformed: str | None = None  # what the latest refused message was, for the alert
        self.version = 0
        self.forget_after_s = forget_after_s
        self._pruned = time.monotonic()

    def update(self, topic_name: str, payload: bytes) -> bool:
        parts = topic_name.split("/")
        if parts[0] != "edgec" or not (len(parts) == 4 and parts[3] in KINDS
                                       or len(parts) == 5 and parts[3] == "update"):
            return False
        if not payload:  # a retained message cleared
            return False
        try:
            message = json.loads(payload, parse_constant=_no_constant, parse_float=_finite)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return self._refuse(topic_name, f"not JSON ({str(exc)[:80]})")
        if not isinstance(message, dict):
            return self._refuse(topic_name, "not a JSON object")
        kind = "update" if len(parts) == 5 else KINDS[parts[3]]
        found = problem(kind, message)
        if found:
            return self._refuse(topic_name, found)
        self._prune()
        if (parts[1], parts[2]) not in self.devices and len(self.devices) >= MAX_DEVICES:
            return self._refuse(topic_name, f"more than {MAX_DEVICES} devices")
        device = self.devices.setdefault((parts[1], parts[2]), {"status": None, "telemetry": None, "event": None,
                                                                "updates": {}, "history": {}})
        if len(parts) == 5:
            device["updates"][parts[4]] = message
        else:
            device[KINDS[parts[3]]] = message
            if parts[3] == "telemetry":
                self._remember(device, message)
        device["seen"] = time.time()
        self.version += 1
        return True

    def _refuse(self, topic_name: str, why: str) -> bool:
        self.malformed += 1
        self.last_malformed = f"{topic_name[:200]}: {why}"
        self.version += 1
        return False

    def _prune(self) -> None:
        """Devices not heard from for ``forget_after_s`` leave the view (checked once a minute)."""
        if time.monotonic() - self._pruned < 60:
            return
        self._pruned = time.monotonic()
        cutoff = time.time() - self.forget_after_s
        for key in [k for k, d in self.devices.items() if d.get("seen", 0) < cutoff]:
            del self.devices[key]

    @staticmethod
    def _remember(device: dict[str, Any], message: dict[str, Any]) -> None:
        models = message.get("models")
        if not isinstance(models, dict):
            return
        at = message.get("time") if isinstance(message.get("time"), (int, float)) else time.time()
        for name, m in models.items():
            latency = m.get("latency_ms") if isinstance(m, dict) else None
            if isinstance(latency, dict):
                points = device["history"].setdefault(name, deque(maxlen=HISTORY))
                points.append((at, latency.get("p50"), latency.get("p95")))

    def rows(self) -> list[dict[str, Any]]:
        """One row per device and model (a device without models gets one row)."""
        out = []
        for (fleet, name), d in sorted(self.devices.items()):
            t = d["telemetry"] or {}
            process = t.get("process", {})
            base = {"fleet": fleet, "device": name, "state": (d["status"] or {}).get("state", "?"),
                    "rss_mb": process.get("rss_bytes") / 2**20 if process.get("rss_bytes") else None,
                    "cpu_percent": process.get("cpu_percent"), "cpu_temp_c": process.get("cpu_temp_c"),
                    "spool": t.get("spool", {}).get("queued"), "dropped": t.get("spool", {}).get("dropped"),
                    "last_event": (d["event"] or {}).get("message"), "seen_s_ago": time.time() - d.get("seen", 0)}
            models = t.get("models") or {}
            if not models:
                out.append({**base, "model": None})
            for model, m in sorted(models.items()):
                out.append({**base, "model": model, "version": m.get("version"), **m.get("latency_ms", {}),
                            "requests_per_s": m.get("requests_per_s"), "errors_per_s": m.get("errors_per_s"),
                            "queue_depth": m.get("queue_depth")})
        return out
