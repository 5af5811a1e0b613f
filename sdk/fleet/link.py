"""The host's one connection to a fleet's broker (:class:`FleetLink`), and what it asks of boards
directly: their status, a pin cleared, a command run. Rollouts are in :mod:`.rollout`.

The link keeps what the boards report (membership, update states, command results) and
the desired states on the broker, all from retained and live messages under ``edgec/<fleet>/``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...errors import BrokerError, ValidationError
from ...runtime.topics import RESERVED, desired_topic, device_topic, fleet_root, rollout_topic
from .view import MAX_MESSAGE_BYTES
from ...runtime.agent.publisher import mqtt_client as host_client, open_client


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (or a bare host) -> host, port, tls."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ValidationError(f"--broker {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def parse_target(target: str) -> str:
    """``group:NAME``, ``device:ID`` or ``all`` -> the desired topic's tail."""
    kind, _, name = target.partition(":")
    if target == "all":
        return "all"
    if kind not in ("group", "device") or not name or "/" in name or "+" in name or "#" in name:
        raise ValidationError(f"--to {target!r} must be group:NAME, device:ID or all")
    return f"{kind}/{name}"


def groups_of(member: dict[str, Any]) -> list[str]:
    """The groups a board's membership message names (only the names; anything else a board sent is ignored)."""
    groups = member.get("groups")
    return [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []


@dataclass
class FleetLink:
    """A connection to the fleet's broker that keeps what the boards report (retained and live)."""

    host: str
    port: int = 1883
    fleet: str = "default"
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None  # verifies an mqtts:// broker with its own CA
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> its fleet message
    updates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (device, model) -> state
    desired: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (model, target) -> payload
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> the newest rollout's record
    signer: Callable[..., dict[str, Any]] | None = None  # signs control messages (edgec.sdk.bundle.sign.control_signer)

    def __post_init__(self) -> None:
        self.base = fleet_root(self.fleet)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.client: Any = None
        self.results: dict[str, dict[str, Any]] = {}  # command id -> the board's answer
        self.asked: set[str] = set()  # ids of the commands this link sent

    def _client(self, protocol: str) -> Any:
        client = host_client(client_id=f"edgec-host-{uuid.uuid4().hex[:8]}", username=self.username,
                             password=self.password, tls=self.tls, ca_file=self.ca_file, protocol=protocol)
        client.max_inflight_messages_set(32)
        client.on_connect = lambda c, u, f, r, p=None: c.subscribe(
            [(device_topic(self.fleet, "+", "fleet"), 1), (device_topic(self.fleet, "+", "update/+"), 1),
             (desired_topic(self.fleet, "#", ""), 1), (device_topic(self.fleet, "+", "cmd-result"), 1),
             (rollout_topic(self.fleet, "+"), 1)])
        client.on_message = self._on_message
        return client

    def __enter__(self) -> FleetLink:
        self.client = open_client(self._client, self.host, self.port)  # MQTT 5, or 3.1.1 if that is all it speaks
        time.sleep(0.5)  # the retained states arrive right after the subscription
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        parts = message.topic[len(self.base) + 1:].split("/")
        if len(message.payload) > MAX_MESSAGE_BYTES:
            return  # no board sends that much: not decoded
        try:
            payload = json.loads(message.payload) if message.payload else None
        except (ValueError, RecursionError):
            return
        if payload is not None and not isinstance(payload, dict):
            return  # every fleet message is a JSON object; anything else from the broker is dropped
        with self._changed:
            if parts[0] == "rollouts" and len(parts) == 2:
                if payload is None:
                    self.rollouts.pop(parts[1], None)
                else:
                    self.rollouts[parts[1]] = payload
            elif parts[0] == "desired" and len(parts) >= 3:
                key = (parts[1], "/".join(parts[2:]))
                if payload is None:
                    self.desired.pop(key, None)
                else:
                    self.desired[key] = payload
            elif parts[0] in RESERVED:
                pass  # the fleet's own levels (chunks, odd rollout topics): never a board
            elif len(parts) == 2 and parts[1] == "fleet" and payload is not None:
                self.members[parts[0]] = payload
            elif len(parts) == 3 and parts[1] == "update" and payload is not None:
                self.updates[(parts[0], parts[2])] = payload
            elif len(parts) == 2 and parts[1] == "cmd-result" and payload is not None \
                    and isinstance(payload.get("id"), str) and payload["id"] in self.asked:  # only answers to what this link asked
                self.results[payload["id"]] = payload
            self._changed.notify_all()

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = True) -> Any:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != 0:
            raise BrokerError(f"the broker refused a message on {topic} (rc {info.rc})")
        return info

    def desire(self, model: str, target: str, payload: dict[str, Any]) -> Any:
        """Publish ``payload`` as the retained desired state of ``model`` for ``target``, signed when a key is set."""
        topic = desired_topic(self.fleet, model, target)
        body = self.signer(payload, topic) if self.signer is not None else payload
        return self.publish(topic, json.dumps(body))

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float) -> Any:
        """Wait until ``predicate()`` (called under the lock) is truthy; its value, or None at the timeout."""
        until = time.monotonic() + timeout_s
        with self._changed:
            while True:
                value = predicate()
                if value or time.monotonic() >= until:
                    return value
                self._changed.wait(min(0.5, max(0.01, until - time.monotonic())))

    def group_members(self, target: str) -> list[str]:
        with self._lock:
            if target == "all":
                return sorted(self.members)
            kind, name = target.split("/", 1)
            if kind == "device":
                return [name]
            return sorted(d for d, m in self.members.items() if name in groups_of(m))


def command(link: FleetLink, device: str, verb: str, body: dict[str, Any], *, timeout_s: float = 30) -> dict[str, Any]:
    """Send ``verb`` to ``device`` (signed when the link has a key) and wait for its answer.

    Raises:
        ValidationError: A device name that is not a plain name.
        BrokerError: No answer within ``timeout_s``.
    """
    if not device or any(c in device for c in "/+#"):
        raise ValidationError(f"--device {device!r} must be a board's name")
    ask = {**body, "id": uuid.uuid4().hex[:12]}
    link.asked.add(ask["id"])
    topic = device_topic(link.fleet, device, f"cmd/{verb}")
    link.publish(topic, json.dumps(link.signer(ask, topic, ttl_s=300) if link.signer else ask), retain=False)
    answer = link.wait_for(lambda: link.results.get(ask["id"]), timeout_s)
    if answer is None:
        raise BrokerError(f"{device} did not answer {verb} within {timeout_s:g} s: is it online (edgec fleet status), "
                          "and signed with a key it trusts (--key)?")
    return answer


def unpin(link: FleetLink, model: str, device: str) -> str | None:
    """Clear the device-level desired state of ``model`` on ``device``: the board follows its group again.

    Returns:
        The version it was pinned to, or ``None`` when it was not pinned.
    """
    if not device or any(c in device for c in "/+#"):
        raise ValidationError(f"--device {device!r} must be a board's name")
    pinned = (link.desired.get((model, f"device/{device}")) or {}).get("version")
    link.publish(desired_topic(link.fleet, model, f"device/{device}"), b"").wait_for_publish(30)
    return pinned


def status(link: FleetLink, model: str | None = None) -> list[dict[str, Any]]:
    """One row per board (and model): groups, desired, running, state, progress, error, age."""
    now = time.time()
    with link._lock:
        rows = []
        for (device, name), state in sorted(link.updates.items()):
            if model is not None and name != model:
                continue
            rows.append({"device": device, "groups": groups_of(link.members.get(device, {})), "model": name,
                         "desired": state.get("desired"), "running": state.get("running"), "state": state.get("state"),
                         "progress": state.get("progress"), "error": state.get("error"),
                         "pinned": (link.desired.get((name, f"device/{device}")) or {}).get("version"),
                         "age_s": round(now - float(state.get("time", now)), 1)})
        seen = {r["device"] for r in rows}
        for device, member in sorted(link.members.items()):
            if device not in seen:
                running = member.get("models") if isinstance(member.get("models"), dict) else {}
                for name, version in sorted(running.items()):
                    if model is None or name == model:
                        rows.append({"device": device, "groups": groups_of(member), "model": name,
                                     "desired": None, "running": version, "state": "idle", "progress": None,
                                     "error": None,
                                     "pinned": (link.desired.get((name, f"device/{device}")) or {}).get("version"),
                                     "age_s": round(now - float(member.get("time", now)), 1)})
    return rows
