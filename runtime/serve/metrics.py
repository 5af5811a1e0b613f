"""Request latencies per model, and the runtime's statistics as Prometheus text."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from ...errors import InputError, QueueFullError


class LatencyWindow:
    """The last ``size`` request latencies of one model (for percentiles), and counters since start."""

    def __init__(self, size: int = 2048) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.errors = 0
        self.failures = 0  # errors of the model or the server, not the client's (bad input, busy)
        self.total_s = 0.0  # summed latency of the answered requests (a Prometheus summary's _sum)

    def error(self, exc: BaseException | None) -> None:
        """Count a request that failed with ``exc`` (None: cancelled); a failure unless it was the client's."""
        self.errors += 1
        if not isinstance(exc, (InputError, QueueFullError)):
            self.failures += 1

    def add(self, seconds: float) -> None:
        self.values.append(seconds)
        self.count += 1
        self.total_s += seconds

    def percentiles(self) -> dict[str, float | None]:
        if not self.values:
            return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
        arr = np.array(self.values) * 1e3
        return {f"p{q}_ms": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def _label(value: Any) -> str:
    """A label value escaped as the text format asks (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> list[str]:
    """One metric family: HELP, TYPE and its samples (``(labels, value)``)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value}" for labels, value in samples]
    return lines


def prometheus_text(stats: dict[str, Any]) -> str:
    """The statistics of :meth:`edgec.runtime.serve.runtime.Runtime.stats` in Prometheus text format."""
    cache, batchers, latency = stats["cache"], stats["batchers"], stats["latency"]

    def per_model(values: dict[str, Any], pick: Any) -> list[tuple[str, Any]]:
        return [(f'{{model="{_label(name)}"}}', pick(v)) for name, v in values.items()]

    lines = _family("edgec_uptime_seconds", "gauge", "Seconds since the runtime started.",
                    [("", f"{stats['uptime_s']:.3f}")])
    lines += _family("edgec_process_rss_bytes", "gauge", "Resident memory of the process.",
                     [("", stats["memory"]["rss_bytes"])])
    lines += _family("edgec_cache_bytes", "gauge", "Memory charged to loaded models.", [("", cache["used_bytes"])])
    lines += _family("edgec_cache_budget_bytes", "gauge", "The cache's memory budget.", [("", cache["budget_bytes"])])
    for key in ("hits", "misses", "evictions", "pressure_evictions", "load_failures"):
        lines += _family(f"edgec_cache_{key}_total", "counter", f"Model cache {key.replace('_', ' ')}.",
                         [("", cache["stats"][key])])
    lines += _family("edgec_requests_total", "counter", "Predict requests by model.",
                     per_model(batchers, lambda b: b["stats"]["requests"]))
    lines += _family("edgec_requests_rejected_total", "counter", "Requests refused because the queue was full.",
                     per_model(batchers, lambda b: b["stats"]["rejected"]))
    lines += _family("edgec_request_errors_total", "counter", "Requests that failed.",
                     per_model(latency, lambda lat: lat["errors"]))
    lines += _family("edgec_queue_depth", "gauge", "Requests waiting for their model.",
                     per_model(batchers, lambda b: b["queue_depth"]))
    lines += _family("edgec_request_failures_total", "counter",
                     "Requests that failed on the server's side (not bad input or a full queue).",
                     per_model(latency, lambda lat: lat["failures"]))
    # A summary: quantiles over the last requests, _sum and _count over all answered ones.
    lines += ["# HELP edgec_request_latency_seconds Latency of answered requests (quantiles over the last 2048).",
              "# TYPE edgec_request_latency_seconds summary"]
    for name, lat in latency.items():
        name = _label(name)
        for q, key in (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms")):
            value = "NaN" if lat[key] is None else f"{lat[key] / 1e3:.7f}"
            lines.append(f'edgec_request_latency_seconds{{model="{name}",quantile="{q}"}} {value}')
        lines.append(f'edgec_request_latency_seconds_sum{{model="{name}"}} {lat["seconds_total"]:.6f}')
        lines.append(f'edgec_request_latency_seconds_count{{model="{name}"}} {lat["requests"]}')
    lines += _family("edgec_model_info", "gauge", "The bundle each model serves (value 1; its version and kind as labels).",
                     [(f'{{model="{_label(m["name"])}",version="{_label(m["version"])}",format="{m["format"]}",'
                       f'precision="{m["precision"]}"}}', 1) for m in cache["loaded"]])
    lines += _family("edgec_batches_total", "counter", "Batches run by model.",
                     per_model(batchers, lambda b: b["stats"]["batches"]))
    drift = {name: d for name, d in stats.get("drift", {}).items() if "unavailable" not in d}  # watched models
    lines += _family("edgec_drift_score", "gauge",
                     "Population stability index of served data against the bundle's held-out data (largest over "
                     "its statistics; over 0.25 is a real shift; NaN until min_samples).",
                     per_model(drift, lambda d: "NaN" if d["score"] is None else d["score"]))
    lines += _family("edgec_drift_alert", "gauge", "1 while the model's drift score is over its alert threshold.",
                     per_model(drift, lambda d: int(d["alert"])))
    lines += _family("edgec_drift_samples", "gauge", "Served samples in the drift window.",
                     per_model(drift, lambda d: d["samples"]))
    return "\n".join(lines) + "\n"


def responses_text(responses: dict[tuple[str, int], int]) -> str:
    """HTTP responses by route kind and status code (both from fixed sets: no label comes from a request)."""
    samples = [(f'{{route="{route}",code="{code}"}}', n) for (route, code), n in sorted(responses.items())]
    return "\n".join(_family("edgec_http_responses_total", "counter",
                             "HTTP responses by route (infer, metadata, health, metrics, reload, other) and status code.",
                             samples)) + "\n"


def grpc_responses_text(responses: dict[tuple[str, str], int]) -> str:
    """gRPC calls by method and status code (the service's own method names and grpc's codes: none from a request)."""
    samples = [(f'{{method="{method}",code="{code}"}}', n) for (method, code), n in sorted(responses.items())]
    return "\n".join(_family("edgec_grpc_responses_total", "counter",
                             "gRPC calls by method (ModelInfer, ModelMetadata, ...) and status code.", samples)) + "\n"
