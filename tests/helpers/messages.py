"""Whole, valid board messages (as docs/telemetry.schema.json defines them) for feeding a fleet view by hand."""

from __future__ import annotations

import time
from typing import Any


def model(version: str = "0123456789ab", p50: float = 1.5, p95: float = 2.0, **over: Any) -> dict[str, Any]:
    return {"loaded": True, "version": version, "latency_ms": {"p50": p50, "p95": p95, "p99": p95},
            "requests": 10, "errors": 0, "requests_per_s": 1.0, "errors_per_s": 0.0, "queue_depth": 0, **over}


def telemetry(device: str = "pi-1", fleet: str = "shop", models: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    models = {"digits": model()} if models is None else models
    return {"seq": 1, "schema": 1, "time": time.time(), "fleet": fleet, "device": device, "uptime_s": 5.0,
            "interval_s": 10, "process": {"rss_bytes": 2**20, "cpu_percent": 3.0, "cpu_temp_c": None},
            "spool": {"queued": 0, "dropped": 0}, "models": models,
            "versions": {name: m["version"] for name, m in models.items()}, **over}


def status(state: str = "online") -> dict[str, Any]:
    return {"schema": 1, "state": state}


def update(model_name: str, device: str, state: str, **over: Any) -> dict[str, Any]:
    return {"model": model_name, "device": device, "desired": "0123456789ab", "running": "0123456789ab",
            "state": state, "time": time.time(), **over}
