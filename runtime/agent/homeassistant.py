"""Home Assistant MQTT discovery: each board's key figures appear as sensors with no set-up in HA.

On every connect the agent publishes one retained config per sensor on
``<prefix>/sensor/<node>/<key>/config`` (``prefix`` is ``homeassistant`` unless the
``[telemetry]`` table says otherwise; ``node`` is ``edgec_<fleet>_<device>``). Each sensor reads
its value from the board's own ``telemetry`` topic with a template, and its availability
from the retained ``status`` topic (the Last Will makes it unavailable when the board drops).
All sensors of a board belong to one HA device. Node-RED and other MQTT tools read the same
topics directly (``docs/telemetry.md``).
"""

from __future__ import annotations

import re
from typing import Any

from ..._version import __version__
from ..fleet_config import TelemetryConfig

# key, name, template (over the telemetry message), unit, device_class, icon
BOARD_SENSORS = (
    ("rss", "Memory (RSS)", "{{ (value_json.process.rss_bytes / 1048576) | round(1) }}", "MiB", "data_size", None),
    ("cpu", "CPU", "{{ value_json.process.cpu_percent }}", "%", None, "mdi:cpu-64-bit"),
    ("temperature", "CPU temperature", "{{ value_json.process.cpu_temp_c }}", "°C", "temperature", None),
    ("spool", "Telemetry backlog", "{{ value_json.spool.queued }}", "messages", None, "mdi:tray-full"),
    ("uptime", "Uptime", "{{ value_json.uptime_s | round(0) }}", "s", "duration", None),
)
MODEL_SENSORS = (
    ("p50", "{model} latency p50", "{{{{ value_json.models['{model}'].latency_ms.p50 }}}}", "ms", "duration", None),
    ("p95", "{model} latency p95", "{{{{ value_json.models['{model}'].latency_ms.p95 }}}}", "ms", "duration", None),
    ("rps", "{model} requests/s", "{{{{ value_json.models['{model}'].requests_per_s }}}}", "req/s", None,
     "mdi:speedometer"),
    ("errors", "{model} errors/s", "{{{{ value_json.models['{model}'].errors_per_s }}}}", "err/s", None,
     "mdi:alert-circle-outline"),
    # PSI has no unit; "None" (no score yet, or no reference) reads as unknown in HA
    ("drift", "{model} drift (PSI)", "{{{{ value_json.models['{model}'].drift.score if value_json.models['{model}'].drift is defined else None }}}}", None, None,
     "mdi:chart-bell-curve"),
)


def node_id(config: TelemetryConfig) -> str:
    """The board's id in discovery topics and unique ids (HA allows ``[a-zA-Z0-9_-]``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"edgec_{config.fleet}_{config.device}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def discovery(config: TelemetryConfig, models: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The retained discovery messages for a board serving ``models``: ``(topic, payload)`` pairs."""
    node = node_id(config)
    device = {"identifiers": [node], "name": f"edgec {config.device}", "manufacturer": "edgec",
              "model": f"edgec runtime ({config.fleet} fleet)", "sw_version": __version__}
    common = {"state_topic": config.topic("telemetry"), "availability_topic": config.topic("status"),
              "availability_template": "{{ value_json.state }}", "payload_available": "online",
              "payload_not_available": "offline", "state_class": "measurement", "device": device}
    sensors = list(BOARD_SENSORS)
    for model in sorted(models):
        sensors += [(f"{_slug(model)}_{key}", name.format(model=model), template.format(model=model), unit, cls, icon)
                    for key, name, template, unit, cls, icon in MODEL_SENSORS]
    out = []
    for key, name, template, unit, cls, icon in sensors:
        payload = {"name": name, "unique_id": f"{node}_{key}", "object_id": f"{node}_{key}",
                   "value_template": template, **({"unit_of_measurement": unit} if unit else {}), **common}
        if cls is not None:
            payload["device_class"] = cls
        if icon is not None:
            payload["icon"] = icon
        out.append((f"{config.discovery_prefix}/sensor/{node}/{key}/config", payload))
    return out
