"""What a dashboard knows about a fleet: the latest status, telemetry, event and update of every device.

Fed with every message under ``edgec/<fleet>/+/+`` and ``edgec/<fleet>/+/update/+`` (see
:mod:`edgec.runtime.agent` and :mod:`edgec.runtime.updater` for the topics);
``edgec telemetry watch`` draws it as a live table, ``edgec dashboard`` as a web page.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

KINDS = {"status": "status", "telemetry": "telemetry", "events": "event"}
HISTORY = 120  # latency points kept per device and model (20 minutes at the default 10 s)


class FleetView:
    """What a dashboard knows: the latest status, telemetry, event and update state of every device seen.

    Feed it every message under the topics above; malformed ones are counted and skipped.
    ``version`` goes up with every message taken, so a watcher can tell when to redraw.
    """

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], dict[str, Any]] = {}
        self.malformed = 0
        self.version = 0

    def update(self, topic_name: str, payload: bytes) -> bool:
        parts = topic_name.split("/")
        if parts[0] != "edgec" or not (len(parts) == 4 and parts[3] in KINDS
                                       or len(parts) == 5 and parts[3] == "update"):
            return False
        if not payload:  # a retained message cleared
            return False
        try:
            message = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.malformed += 1
            return False
        if not isinstance(message, dict):
            self.malformed += 1
            return False
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
