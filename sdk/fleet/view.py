"""What a dashboard knows about a fleet: the latest status, telemetry and event of every device.

Fed with every message under ``edgec/#`` (see :mod:`edgec.runtime.agent` for the topics);
``edgec telemetry watch`` draws it as a live table.
"""

from __future__ import annotations

import json
import time
from typing import Any


class FleetView:
    """What a dashboard knows: the latest status, telemetry and event of every device seen.

    Feed it every message under ``edgec/#``; malformed ones are counted and skipped.
    """

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], dict[str, Any]] = {}
        self.malformed = 0

    def update(self, topic_name: str, payload: bytes) -> bool:
        parts = topic_name.split("/")
        if len(parts) != 4 or parts[0] != "edgec" or parts[3] not in ("status", "telemetry", "events"):
            return False
        try:
            message = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.malformed += 1
            return False
        if not isinstance(message, dict):
            self.malformed += 1
            return False
        device = self.devices.setdefault((parts[1], parts[2]), {"status": None, "telemetry": None, "event": None})
        device[{"events": "event"}.get(parts[3], parts[3])] = message
        device["seen"] = time.time()
        return True

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
