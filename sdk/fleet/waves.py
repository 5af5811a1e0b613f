"""Which boards a push reaches and in what order: tag queries, waves, and the gates between waves.

A push targets ``all``, a group or a device, narrowed by ``--where`` over the tags boards declare
(``[fleet] tags``). Its boards are split into waves (``--waves 1,10%``: one board, then a tenth,
then the rest; ``--canary K`` is ``--waves K``). Each wave must reach ``success_rate`` of its
boards live before the next starts; when the share of failed boards over the waves so far passes
``abort_rate``, the rollout halts and is rolled back fleet-wide. The host keeps a retained record
of the waves on ``edgec/<fleet>/rollouts/<model>`` that ``edgec fleet status`` shows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ...errors import ValidationError
from ...runtime.fleet_config import MAX_TAGS, valid_tag


def parse_where(terms: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``["site=shop-3", "hw=rpi4"]`` (or ``"site=shop-3,hw=rpi4"`` items) -> ``{"site": "shop-3", "hw": "rpi4"}``."""
    found: dict[str, str] = {}
    for term in (t for item in terms or () for t in item.split(",") if t.strip()):
        key, eq, value = (part.strip() for part in term.partition("="))
        if not eq or not valid_tag(key, value):
            raise ValidationError(f"--where {term!r} must be NAME=VALUE (letters, digits, '.', '_', '-'), "
                                  "e.g. --where site=shop-3")
        if found.get(key, value) != value:
            raise ValidationError(f"--where names {key} twice with different values: a board has one {key}")
        found[key] = value
    return found


def tags_of(member: dict[str, Any]) -> dict[str, str]:
    """The tags a board's membership message declares: only tags a board could declare, and at most as many
    (anything else from the broker is never matched or printed)."""
    tags = member.get("tags")
    found = [(k, v) for k, v in tags.items() if valid_tag(k, v)] if isinstance(tags, dict) else []
    return dict(found[:MAX_TAGS])


def matches(member: dict[str, Any], where: dict[str, str]) -> bool:
    tags = tags_of(member)
    return all(tags.get(k) == v for k, v in where.items())


def parse_waves(spec: str | None, canary: int = 0) -> list[str]:
    """``"1,10%,rest"`` -> ``["1", "10%"]`` (the rest is always the last wave); ``canary`` K alone is ``["K"]``."""
    if spec and canary:
        raise ValidationError("--canary K is --waves K: give one of them")
    if not spec:
        return [str(canary)] if canary else []
    sizes = [s.strip() for s in spec.split(",") if s.strip()]
    if sizes and sizes[-1] == "rest":
        sizes.pop()
    for size in sizes:
        number = size[:-1] if size.endswith("%") else size
        if not number.isdigit() or int(number) < 1 or (size.endswith("%") and int(number) > 100):
            raise ValidationError(f"--waves {spec!r}: each wave is a number of boards (3) or a share (10%), "
                                  "the last may be 'rest', e.g. --waves 1,10%,rest")
    return sizes


def plan_waves(devices: list[str], sizes: list[str]) -> list[list[str]]:
    """Split ``devices`` (in order) into waves of ``sizes``; the rest, possibly none, is the last wave.

    Raises:
        ValidationError: The first wave (the canaries) takes every board: nothing is left to protect.
    """
    waves, start = [], 0
    for size in sizes:
        n = math.ceil(len(devices) * int(size[:-1]) / 100) if size.endswith("%") else int(size)
        if start < len(devices):
            waves.append(devices[start:start + n])
            start += n
    if waves and len(waves[0]) >= len(devices):
        raise ValidationError(f"--waves/--canary {sizes[0]} takes all {len(devices)} board(s) in the first wave: "
                              "leave some boards for after the canaries (boards report their groups when they connect)")
    return [*waves, devices[start:]]


@dataclass
class Wave:
    devices: list[str]
    started: bool = False
    states: dict[str, str] = field(default_factory=dict)  # device -> live, a failure state, or pending

    def count(self, *states: str) -> int:
        return sum(1 for s in self.states.values() if s in states)


@dataclass
class Record:
    """A rollout as the host publishes it (retained) and ``fleet status`` shows it."""

    model: str
    version: str
    rollout: str
    target: str
    where: dict[str, str]
    success_rate: float
    abort_rate: float | None
    waves: list[Wave]
    state: str = "running"
    reason: str | None = None
    errors: dict[str, str] = field(default_factory=dict)  # device -> why it failed (kept off the broker)

    def gate(self, index: int, failed_states: set[str]) -> tuple[str, str] | None:
        """After wave ``index``: ``("rolled_back" | "halted", why)``, or None to go on."""
        wave = self.waves[index]
        done = [w for w in self.waves[:index + 1] if w.started]
        failed = sum(w.count(*failed_states) for w in done)
        settled = sum(w.count("live", *failed_states) for w in done)
        last = index == len(self.waves) - 1
        if self.abort_rate is not None and settled and failed / settled > self.abort_rate:
            return "rolled_back", (f"{failed} of {settled} boards failed ({100 * failed / settled:.0f}%), over the "
                                   f"abort rate {100 * self.abort_rate:g}%")
        if self.abort_rate is None and not last and wave.count(*failed_states):
            return "rolled_back", (f"wave {index + 1} ({'canary' if index == 0 else 'wave'}): "
                                   f"{wave.count(*failed_states)} of {len(wave.devices)} failed")
        live = wave.count("live")
        if not last and live < math.ceil(self.success_rate * len(wave.devices) - 1e-9):
            return "halted", (f"wave {index + 1}: {live} of {len(wave.devices)} live, {wave.count('pending')} still "
                              f"pending at the timeout; the next wave needs {100 * self.success_rate:g}%")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "rollout": self.rollout, "target": self.target,
                "where": self.where, "success_rate": self.success_rate, "abort_rate": self.abort_rate,
                "waves": [{"devices": w.devices, "started": w.started, "live": w.count("live"),
                           "failed": len(w.states) - w.count("live", "pending"), "pending": w.count("pending")
                           + (len(w.devices) - len(w.states))} for w in self.waves],
                "state": self.state, "reason": self.reason, "time": time.time()}


def describe(record: dict[str, Any]) -> str:
    """One line for people: ``rollout ab12cd34 of 3f2a... to group/lab: wave 2/3, halted: why``."""
    waves = record.get("waves") if isinstance(record.get("waves"), list) else []
    waves = [w for w in waves if isinstance(w, dict)]
    parts = [f"{i + 1}: {w.get('live', 0)}/{len(w.get('devices') or [])} live"
             + (f", {w['failed']} failed" if w.get("failed") else "")
             + ("" if w.get("started") else " (not started)") for i, w in enumerate(waves)]
    where = record.get("where") if isinstance(record.get("where"), dict) else {}
    head = (f"rollout {record.get('rollout')} of {record.get('model')} {record.get('version')} to "
            f"{str(record.get('target')).replace('/', ':')}"
            + (f" where {','.join(f'{k}={v}' for k, v in where.items())}" if where else ""))
    reason = f": {record['reason']}" if record.get("reason") else ""
    return f"{head}: {record.get('state')}{reason}; waves {'; '.join(parts) or 'none'}"
