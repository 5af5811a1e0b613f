"""What a dashboard knows about a fleet: the latest status, telemetry, event and update of every device.

Fed with every message under ``edgec/<fleet>/+/+`` and ``edgec/<fleet>/+/update/+`` (see
:mod:`edgec.runtime.agent.telemetry` and :mod:`edgec.runtime.agent.updates` for the topics);
``edgec telemetry watch`` draws it as a live table, ``edgec dashboard`` as a web page.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._optional import need
from ...runtime.topics import RESERVED

KINDS = {"status": "status", "telemetry": "telemetry", "events": "event"}  # topic -> where the view keeps it
HISTORY = 120  # latency points kept per device and model (20 minutes at the default 10 s)
FORGET_AFTER_S = 24 * 3600  # a device not heard from for this long leaves the view
MAX_MESSAGE_BYTES = 1 << 20  # a board's message is a few kB: larger ones are refused before decoding
MAX_DEVICES = 100_000  # past this, new device ids are refused (a flood of fake ones is bounded)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is out of range")
    return value


SCHEMA = Path(__file__).with_name("telemetry.schema.json")  # docs/telemetry.schema.json


@functools.lru_cache(maxsize=None)
def validator(kind: str) -> Callable[[Any], Any]:
    """The compiled check of one topic's payload against ``telemetry.schema.json`` (``kind`` is a
    ``$defs`` name: status, telemetry, events, update). About 20 µs a telemetry message."""
    need("fastjsonschema", extra="sdk", purpose="to check telemetry against its schema")
    import fastjsonschema

    defs = json.loads(SCHEMA.read_text(encoding="utf-8"))["$defs"]
    # The schema's keywords are all draft-07's; fastjsonschema compiles draft-07 (not 2020-12's URI).
    return fastjsonschema.compile({"$schema": "http://json-schema.org/draft-07/schema#", "$ref": f"#/$defs/{kind}",
                                   "$defs": defs})


def problem(kind: str, message: dict[str, Any]) -> str | None:
    """What makes ``message`` (on a ``kind`` topic) invalid against the schema, or ``None``."""
    import fastjsonschema

    try:
        validator(kind)(message)
    except fastjsonschema.JsonSchemaException as exc:
        return str(exc.message)[:160]
    return None


class FleetView:
    """What a dashboard knows: the latest status, telemetry, event and update state of every device seen.

    Feed it every message under the topics above; one that is not JSON, has a non-finite number or
    does not match its topic's definition in ``telemetry.schema.json`` is counted and skipped.
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
        if parts[0] != "edgec" or len(parts) < 4 or parts[2] in RESERVED or not (
                len(parts) == 4 and parts[3] in KINDS or len(parts) == 5 and parts[3] == "update"):
            return False
        if not payload:  # a retained message cleared
            return False
        if len(payload) > MAX_MESSAGE_BYTES:
            return self._refuse(topic_name, f"{len(payload)} bytes, over {MAX_MESSAGE_BYTES}")
        try:
            message = json.loads(payload, parse_constant=_no_constant, parse_float=_finite)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return self._refuse(topic_name, f"not JSON ({str(exc)[:80]})")
        if not isinstance(message, dict):
            return self._refuse(topic_name, "not a JSON object")
        found = problem("update" if len(parts) == 5 else parts[3], message)
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
                            "queue_depth": m.get("queue_depth"),
                            "drift": _score(m.get("drift"))})
        return out


def number(value: Any) -> float | None:
    """A figure from a board's message, if it is a number (anything else reads as none)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _score(drift: Any) -> float | None:
    """A model's drift score from a board's telemetry."""
    return number(drift.get("score")) if isinstance(drift, dict) else None
