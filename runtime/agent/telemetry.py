"""The device agent: publishes a runtime's metrics and alerts over MQTT, and takes commands.

Topics (``<fleet>`` and ``<device>`` from the config; every payload is a JSON object with
``"schema": 1``)::

    edgec/<fleet>/<device>/status       retained; "online" at connect, "offline" at stop and
                                        as the Last Will when the device drops off
    edgec/<fleet>/<device>/telemetry    metrics every ``interval_s`` (and on the stats command)
    edgec/<fleet>/<device>/events       alerts: memory_pressure, model_load_failure, latency,
                                        telemetry_problem (a damaged spool recovered, a sender error)
    edgec/<fleet>/<device>/cmd/<verb>   commands to the device: reload, stats, interval
    edgec/<fleet>/<device>/cmd-result   one answer per command, ok or with an error
    homeassistant/sensor/...            retained Home Assistant discovery (:mod:`.homeassistant`)

Every field is specified in ``docs/telemetry.schema.json`` (``docs/telemetry.md``).

Telemetry, events and command results go through :class:`~edgec.runtime.agent.publisher.Publisher`
(spooled, QoS 1). Each carries ``seq``, increasing per device across restarts, so a
dashboard can spot gaps and duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..._version import __version__
from ...errors import EdgecError, ValidationError
from ..fleet_config import TelemetryConfig
from ..files import write_atomic
from .control import check as check_control
from .homeassistant import discovery
from .publisher import IDLE_WAKE_S, SCHEMA, Publisher
from ..system import CpuMeter, cpu_temperature_c, rss_bytes

log = logging.getLogger("edgec.telemetry")
VERBS = ("reload", "stats", "interval")
# Commands taken per second, with a burst: a flood is dropped at the door, never queued or answered.
COMMAND_RATE, COMMAND_BURST = 5.0, 20
# At most one answer per this many seconds to commands that were refused (bad signature, replay, busy):
# a flood of forged commands must not fill the spool with their refusals and crowd out telemetry.
REFUSAL_EVERY_S = 1.0
# A command is a small JSON object: larger payloads are dropped before they are queued or decoded.
MAX_COMMAND_BYTES = 64 * 1024
# Telemetry interval bounds, in seconds.
INTERVAL_RANGE = (0.1, 86_400.0)


def _read_seq(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


class Telemetry:
    """Publishes a runtime's metrics and alerts, and takes commands, over MQTT.

    Args:
        config: Broker and topic settings.
        runtime: A :class:`edgec.runtime.server.Runtime` (or anything with ``stats()``,
            ``reload(name, path)`` and ``alert_listeners``); ``None`` publishes process
            metrics only.

    Example:
        >>> telemetry = Telemetry(TelemetryConfig(broker="localhost", fleet="shop"), runtime).start()
        >>> telemetry.stop()
    """

    def __init__(self, config: TelemetryConfig, runtime: Any = None) -> None:
        self.config = config
        self.runtime = runtime
        self.interval_s = config.interval_s
        self.started = time.time()
        online = {"schema": SCHEMA, "state": "online", "edgec": __version__, "pid": os.getpid()}
        offline = {"schema": SCHEMA, "state": "offline"}
        self.publisher = Publisher(config, on_message=self._on_message, subscriptions=(config.topic("cmd/+"),),
                                   status=(online, offline),
                                   retained=self._discovery if config.homeassistant else None)
        self._commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=64)
        # Boards that trust keys take only signed commands (edgec.runtime.agent.control), each newer than the last.
        self.trusted = getattr(getattr(runtime, "cache", None), "trusted", None)
        # The newest signed command taken, kept beside the spool: a command replayed after a restart is refused.
        self._seq_file = Path(f"{config.spool}.commands")
        self._command_seq = _read_seq(self._seq_file)
        self._tokens, self._refill = float(COMMAND_BURST), time.monotonic()
        self._last_refusal = 0.0
        self.commands_dropped = 0
        self._problems: deque[str] = deque(maxlen=100)
        self._stop = threading.Event()
        self._tick = threading.Event()
        self._cpu = CpuMeter()
        self._previous: dict[str, tuple[float, int, int]] = {}
        self._threads = [threading.Thread(target=self._ticker, name="edgec-telemetry", daemon=True),
                         threading.Thread(target=self._command_loop, name="edgec-telemetry-cmd", daemon=True)]

    def start(self) -> Telemetry:
        self.publisher.start()
        for problem in self.publisher.spool.problems:  # found when the spool was opened
            self.event("telemetry_problem", problem)
        self.publisher.on_problem = self._on_problem
        if self.runtime is not None:
            self.runtime.alert_listeners.append(self._on_alert)
            if hasattr(self.runtime, "health_checks"):
                self.runtime.health_checks["telemetry"] = self.publisher.health
            for name, why in getattr(self.runtime, "failed", {}).items():
                self.event("model_load_failure", f"model {name} is not served: {why}", model=name)
        for t in self._threads:
            t.start()
        return self

    def stop(self, flush_s: float = 5.0) -> None:
        self._stop.set()
        self._tick.set()
        try:
            self._commands.put_nowait(("", b""))  # (a full queue keeps the loop busy: it sees the stop anyway)
        except queue.Full:
            pass
        for t in self._threads:
            t.join(5)
        if self.runtime is not None and self._on_alert in self.runtime.alert_listeners:
            self.runtime.alert_listeners.remove(self._on_alert)
        self.publisher.stop(flush_s)

    def _discovery(self) -> list[tuple[str, dict[str, Any]]]:
        """Home Assistant discovery for this board and the models it serves (at every connect)."""
        return discovery(self.config, sorted(self.runtime.batchers) if self.runtime is not None else [])

    # -- messages -----------------------------------------------------------------------------
    def event(self, kind: str, message: str, **extra: Any) -> int:
        """Publish one alert on ``events``."""
        return self.publisher.publish(self.config.topic("events"), {
            "schema": SCHEMA, "time": time.time(), "kind": kind, "message": message, "versions": self.versions(),
            **extra})

    def versions(self) -> dict[str, str | None]:
        """The version each model runs now, carried by every message so dashboards can split by it."""
        if self.runtime is None:
            return {}
        return {name: self.runtime.running_version(name) for name in self.runtime.batchers}

    def snapshot(self) -> dict[str, Any]:
        """The telemetry message: process, spool, cache and per-model metrics."""
        now = time.time()
        out: dict[str, Any] = {
            "schema": SCHEMA, "time": now, "fleet": self.config.fleet, "device": self.config.device,
            "uptime_s": round(now - self.started, 3), "interval_s": self.interval_s,
            "process": {"rss_bytes": rss_bytes(), "cpu_percent": self._cpu.read(), "cpu_temp_c": cpu_temperature_c()},
            "spool": self.publisher.spool.describe(),
            "models": {}, "versions": self.versions(),
        }
        if self.runtime is None:
            return out
        stats = self.runtime.stats()
        out["uptime_s"] = round(stats["uptime_s"], 3)
        out["cache"] = {k: stats["cache"][k] for k in ("budget_bytes", "used_bytes")} | stats["cache"]["stats"]
        loaded = {e["name"]: e for e in stats["cache"]["loaded"]}
        for name, batcher in stats["batchers"].items():
            lat = stats["latency"].get(name, {})
            requests, errors = lat.get("requests", 0), lat.get("errors", 0)
            before = self._previous.get(name, (self.started, 0, 0))
            span = max(now - before[0], 1e-9)
            self._previous[name] = (now, requests, errors)
            entry = loaded.get(name, {})
            out["models"][name] = {
                "loaded": name in loaded, "version": entry.get("version"), "sha256": entry.get("sha256"),
                "format": entry.get("format"), "precision": entry.get("precision"),
                "latency_ms": {q: lat.get(f"{q}_ms") for q in ("p50", "p95", "p99")},
                "requests": requests, "errors": errors,
                "requests_per_s": round((requests - before[1]) / span, 3),
                "errors_per_s": round((errors - before[2]) / span, 3),
                "queue_depth": batcher["queue_depth"], "batch_sizes": batcher["stats"]["batch_sizes"],
                "rejected": batcher["stats"]["rejected"],
            }
            drift = stats.get("drift", {}).get(name)
            if drift is not None and "unavailable" not in drift:
                out["models"][name]["drift"] = {k: drift[k] for k in ("score", "statistic", "samples", "threshold", "alert")}
            p95 = lat.get("p95_ms")
            if self.config.latency_alert_ms is not None and p95 is not None and p95 > self.config.latency_alert_ms:
                self.event("latency", f"model {name} p95 latency {p95:.1f} ms is above {self.config.latency_alert_ms:g} ms",
                           model=name, p95_ms=p95)
        return out

    def publish_snapshot(self) -> int:
        return self.publisher.publish(self.config.topic("telemetry"), self.snapshot())

    def _ticker(self) -> None:
        while not self._stop.is_set():
            try:
                self.publisher.ensure_sender()
                while self._problems:
                    self.event("telemetry_problem", self._problems.popleft())
                self.publish_snapshot()
            except Exception:  # telemetry must never take serving down
                log.exception("telemetry snapshot failed")
            self._tick.wait(self.interval_s)
            self._tick.clear()

    def _on_problem(self, message: str) -> None:
        """(from inside the spool or the sender) Publish it later, from the ticker: never re-enter the spool."""
        self._problems.append(message)
        self._tick.set()

    def _on_alert(self, alert: dict[str, Any]) -> None:
        self.event(alert.get("kind", "alert"), alert.get("message", ""))

    # -- commands -----------------------------------------------------------------------------
    def _on_message(self, topic_name: str, payload: bytes) -> None:
        if len(payload) > MAX_COMMAND_BYTES:
            self._drop(topic_name, f"a command of {len(payload)} bytes is over {MAX_COMMAND_BYTES}")
            return
        now = time.monotonic()
        self._tokens = min(float(COMMAND_BURST), self._tokens + (now - self._refill) * COMMAND_RATE)
        self._refill = now
        if self._tokens < 1.0:
            self._drop(topic_name, "over the command rate limit")
            return
        self._tokens -= 1.0
        try:
            self._commands.put_nowait((topic_name, payload))
        except queue.Full:
            self._drop(topic_name, "device busy: too many commands queued; retry")

    def _drop(self, topic_name: str, why: str) -> None:
        """A command not taken: counted, and answered at most once a second (never a spool's worth)."""
        self.commands_dropped += 1
        now = time.monotonic()
        if now - self._last_refusal >= REFUSAL_EVERY_S:
            self._last_refusal = now
            self._result(topic_name.rsplit("/", 1)[-1], None,
                         error=f"{why} ({self.commands_dropped} command(s) dropped so far)")

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                topic_name, payload = self._commands.get(timeout=IDLE_WAKE_S)
            except queue.Empty:
                continue
            if not topic_name:  # stop() woke it
                continue
            verb = topic_name.rsplit("/", 1)[-1]
            request_id = None
            try:
                body = json.loads(payload) if payload.strip() else {}
                if not isinstance(body, dict):
                    raise ValidationError("command payload must be a JSON object")
                request_id = body.get("id")
                if self.trusted is not None:
                    try:
                        self._command_seq = check_control(body, topic_name, self.trusted, newest_seq=self._command_seq + 1)
                        write_atomic(self._seq_file, b"%d\n" % self._command_seq)
                    except EdgecError as exc:
                        self._drop(topic_name, f"refused: {exc}")
                        continue
                result = self.command(verb, body)
            except json.JSONDecodeError as exc:
                self._result(verb, request_id, error=f"payload is not JSON: {exc}")
            except KeyError as exc:
                self._result(verb, request_id, error=f"unknown model {exc}")
            except (EdgecError, OSError, ValueError, TypeError) as exc:
                self._result(verb, request_id, error=str(exc))
            except Exception as exc:  # a command must never kill the device
                log.exception("command %s failed", verb)
                self._result(verb, request_id, error=f"internal error: {exc}")
            else:
                self._result(verb, request_id, result=result)

    def command(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run one command; returns its result.

        Raises:
            ValidationError: Unknown verb or bad arguments.
            KeyError: Unknown model.
            EdgecError: The command failed (e.g. the new bundle is broken).
        """
        if verb == "interval":
            seconds = body.get("seconds")
            low, high = INTERVAL_RANGE
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not low <= seconds <= high:
                raise ValidationError(f'interval needs {{"seconds": <number between {low:g} and {high:g}>}}')
            self.interval_s = float(seconds)
            self._tick.set()
            return {"interval_s": self.interval_s}
        if verb == "stats":
            seq = self.publish_snapshot()
            return {"telemetry_seq": seq}
        if verb == "reload":
            if self.runtime is None:
                raise ValidationError("this device serves no models")
            model = body.get("model")
            if not isinstance(model, str):
                raise ValidationError('reload needs {"model": "<name>"} (and optionally "path")')
            return {"reloaded": self.runtime.reload(model, body.get("path"))}
        raise ValidationError(f"unknown command {verb!r}: use one of {', '.join(VERBS)}")

    def _result(self, verb: str, request_id: Any, *, result: Any = None, error: str | None = None) -> None:
        message = {"schema": SCHEMA, "time": time.time(), "verb": verb, "id": request_id, "ok": error is None,
                   "versions": self.versions()}
        if error is None:
            message["result"] = result
        else:
            message["error"] = error
        self.publisher.publish(self.config.topic("cmd-result"), message)
