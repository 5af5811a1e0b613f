"""``edgec fleet push / status / rollback``: desired model versions for boards, over their MQTT broker.

The host publishes the bundle's chunks and the desired state as retained messages (the
topics are described in :mod:`edgec.runtime.agent.updates`); boards that are offline converge when
they come back, with nothing of the host's running. A push with ``canary`` updates that many
boards of the group first, by device-level desired states, waits for each to be live (or to
fail), and only then sets the group's; a failed canary halts the rollout, and the canaries
return to the group's previous version.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ValidationError
from ...runtime.topics import blob_topic, desired_topic, rollout_topic
from ...runtime.agent.delivery import CHUNK_BYTES
from ...runtime.bundle.archive import pack
from ...runtime.bundle.manifest import read_manifest, verify_files
from ...runtime.bundle.signing import read_signature
from .blobs import publish_chunks, publish_web, web_base
from .link import FleetLink, groups_of
from .waves import Record, Wave, matches, parse_waves, plan_waves, tags_of

DONE = {"live"}
FAILED = {"rolled_back", "refused", "failed"}


@dataclass
class Rollout:
    """What a push did: which boards, and how each ended."""

    model: str
    version: str
    rollout: str
    target: str
    canaries: list[str]
    states: dict[str, str]  # device -> final state (or "pending" at the timeout)
    halted: bool
    seconds: float
    blob_bytes: int
    errors: dict[str, str] = field(default_factory=dict)
    state: str = "done"  # done, halted (a wave short of its success rate) or rolled_back
    reason: str | None = None
    waves: list[list[str]] = field(default_factory=list)


def push(link: FleetLink, bundle: str | Path, model: str, target: str, *, canary: int = 0, waves: str | None = None,
         where: dict[str, str] | None = None, success_rate: float = 1.0, abort_rate: float | None = None,
         timeout_s: float = 600, chunk_size: int = CHUNK_BYTES, progress: Callable[[str], None] | None = None,
         allow_empty: bool = False, rollback: bool = False, any_device: bool = False,
         blob_dir: Path | None = None, blob_url: str | None = None) -> Rollout:
    """Publish ``bundle`` as the desired version of ``model`` for ``target`` (``group/NAME``...), wave by wave.

    Raises:
        BundleError, IntegrityError: Not a bundle, or its files do not match the manifest.
        ValidationError: Waves for a single device, or waves that leave no boards for the last; a target
            (and ``where``) no board of the fleet is in (unless ``allow_empty``), with the groups that exist.

    ``waves`` (``"1,10%"``; ``canary`` K is ``"K"``) and the gates ``success_rate`` and
    ``abort_rate`` are described in :mod:`.waves`; ``where`` narrows the target to boards with those
    tags (they get device-level desired states). ``rollback`` marks the push as deliberately taking
    boards back to a version they replaced (boards with ``trusted_keys`` refuse a replaced version
    otherwise); ``any_device`` lets boards of another CPU architecture than the bundle's profile
    take it. ``blob_dir`` and ``blob_url`` put the bundle in a folder a web server serves instead of
    on the broker (:mod:`.blobs`).
    """
    if (blob_dir is None) != (blob_url is None):
        raise ValidationError("--blob-dir and --blob-url go together: the folder the bundle is written to, and the "
                              "URL a web server serves that folder at")
    if blob_url is not None:
        web_base(blob_url)  # a URL no board would take is refused before anything is packed or written
    if not 0 < success_rate <= 1 or abort_rate is not None and not 0 <= abort_rate < 1:
        raise ValidationError("--success-rate must be above 0 and at most 1, --abort-rate at least 0 and below 1")
    say = progress or (lambda message: None)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    version = manifest.version
    started = time.monotonic()
    where = dict(where or {})
    with link._lock:
        known = dict(link.members)
    members = [m for m in link.group_members(target) if m in known and matches(known[m], where)]
    if not members and not allow_empty:
        raise ValidationError(_no_boards(link, target, where))
    sizes = parse_waves(waves, canary)
    if sizes and target.startswith("device/"):
        raise ValidationError("--waves and --canary need --to group:NAME or all (waves are boards of the target)")
    plan = plan_waves(members, sizes)
    if where and len(plan) > 1 and not plan[-1]:
        plan.pop()  # boards chosen by tags are all in the waves: there is no target-level state to set last
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "bundle.tar"
        pack(bundle, archive)
        if blob_dir is not None and blob_url is not None:
            say(f"writing {archive.stat().st_size} bytes to {blob_dir} and fetching them back from {blob_url}")
            blob = publish_web(archive, Path(blob_dir), blob_url, chunk_size)
        else:
            say(f"publishing {archive.stat().st_size} bytes in chunks of {chunk_size}")
            blob = publish_chunks(link, archive, chunk_size)
    previous = _trusted_desired(link, model, target, say)
    desired = {"model": model, "version": version, "rollout": uuid.uuid4().hex[:8], "blob": blob.to_dict(),
               "model_bytes": (bundle / manifest.model_file).stat().st_size, "format": manifest.format,
               "precision": manifest.precision, "signed_by": (read_signature(bundle) or {}).get("key_id"),
               "device": {k: manifest.device.get(k) for k in ("name", "arch", "accelerator")},
               **({"any_device": True} if any_device else {}),
               "time": time.time(), "previous": _without_previous(previous), **({"rollback": True} if rollback else {})}
    record = Record(model, version, desired["rollout"], target, where, success_rate, abort_rate,
                    [Wave(devices) for devices in plan])
    pinned: list[str] = []  # boards given a device-level desired state by this rollout
    for index, wave in enumerate(record.waves):
        last = index == len(record.waves) - 1
        wave.started = True
        _publish_record(link, record)
        if last and not where:  # the target's own desired state: late joiners take it too
            if index:
                say(f"wave {index + 1}/{len(record.waves)}: the rest of {target.replace('/', ':')}")
            link.desire(model, target, desired)
            pinned = _unpin(link, model, pinned)  # from now on they follow the target's desired state
        else:
            say(f"wave {index + 1}/{len(record.waves)}: {', '.join(wave.devices)}")
            for device in wave.devices:
                link.desire(model, f"device/{device}", desired)
            pinned += wave.devices
        wave.states, errors = _await(link, model, desired, wave.devices,
                                     max(0.0, timeout_s - (time.monotonic() - started)))
        record.errors.update(errors)
        verdict = record.gate(index, FAILED)
        if verdict is not None:
            record.state, record.reason = verdict
            if record.state == "rolled_back":
                say(f"rolling back: {record.reason}")
                _roll_back(link, model, target, previous, record, pinned, target_set=last and not where)
            else:
                say(f"halted: {record.reason}")
            break
    else:
        record.state = "done"
        _clear_old_blobs(link, previous, keep={blob.sha256})
    _publish_record(link, record)
    states = {d: s for w in record.waves for d, s in w.states.items()}
    first = record.waves[0].devices if sizes and len(record.waves) > 1 else []
    return Rollout(model, version, desired["rollout"], target, first, states, record.state != "done",
                   time.monotonic() - started, blob.size, record.errors, record.state, record.reason,
                   [w.devices for w in record.waves])


def _publish_record(link: FleetLink, record: Record) -> None:
    link.publish(rollout_topic(link.fleet, record.model), json.dumps(record.to_dict()))


def _roll_back(link: FleetLink, model: str, target: str, previous: dict[str, Any] | None, record: Record,
               pinned: list[str], *, target_set: bool) -> None:
    """Put the boards this rollout made live back on the version before it; boards that failed went back alone."""
    live = any(s == "live" for w in record.waves for s in w.states.values())
    if not live and not target_set:  # nobody switched: the pins go, and boards follow their target as before
        _unpin(link, model, pinned)
        return
    try:
        back = _back(previous or _starting_version(link, model, target))
    except ValidationError as exc:
        record.reason = f"{record.reason}; could not roll back: {exc}"
        return
    if record.where:  # boards chosen by tags stay pinned, to the version before
        for device in pinned:
            link.desire(model, f"device/{device}", back)
        return
    link.desire(model, target, back)
    _unpin(link, model, pinned)


def _unpin(link: FleetLink, model: str, devices: list[str]) -> list[str]:
    """Clear the device-level desired states this rollout set; the (now empty) list of pinned boards."""
    for device in devices:
        link.publish(desired_topic(link.fleet, model, f"device/{device}"), b"")
    return []


def _back(previous: dict[str, Any]) -> dict[str, Any]:
    """A desired state taking boards back to ``previous`` (signed anew: they ran the newer one)."""
    back = {k: v for k, v in previous.items() if k not in ("sig", "topic", "seq", "expires")}
    back.update(rollout=uuid.uuid4().hex[:8], time=time.time(), previous=None, rollback=True)
    return back


def _trusted_desired(link: FleetLink, model: str, target: str,
                     say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The desired state on the broker, if it is this host's own (signed by its key, when it has one)."""
    current = link.desired.get((model, target))
    signed_by_me = getattr(link.signer, "signed_by_me", None)
    if current is None or signed_by_me is None:
        return current
    if signed_by_me(current, desired_topic(link.fleet, model, target)):
        return current
    if say is not None:
        say(f"the desired state found for {model} on {target.replace('/', ':')} is not signed by this key: "
            "not kept as the version to roll back to")
    return None


def _starting_version(link: FleetLink, model: str, target: str) -> dict[str, Any]:
    """After a first push: the version the target's boards ran before it (each still has it), as a desired
    state without a bundle.

    Raises:
        ValidationError: The boards started from different versions, or none is known.
    """
    shown = target.replace("/", ":")
    devices = link.group_members(target)  # takes the lock itself
    with link._lock:
        found = {}
        for device in devices:
            started = link.members.get(device, {}).get("started")
            started = started.get(model) if isinstance(started, dict) else None
            if isinstance(started, str):
                found[device] = started
    versions = set(found.values())
    if len(versions) != 1:
        raise ValidationError(f"{model} on {shown} has no previous push to roll back to, and its boards' starting "
                              f"versions are {', '.join(f'{d}: {v}' for d, v in sorted(found.items())) or 'unknown'}: "
                              "push the bundle you want instead")
    return {"model": model, "version": versions.pop(), "blob": None}


def _no_boards(link: FleetLink, target: str, where: dict[str, str] | None = None) -> str:
    """Why a target has no boards, with what the fleet does have."""
    with link._lock:
        groups = sorted({g for m in link.members.values() for g in groups_of(m)})
        devices = sorted(link.members)
        tags = sorted({f"{k}={v}" for m in link.members.values() for k, v in tags_of(m).items()})
    shown = target.replace("/", ":")
    if where and devices:
        return (f"no board of fleet {link.fleet!r} in {shown} has the tags {', '.join(f'{k}={v}' for k, v in where.items())}:"
                f" the tags boards declare are {', '.join(tags[:30]) or 'none'}. Pass --allow-empty to push anyway")
    if not devices:
        return (f"no board of fleet {link.fleet!r} has reported to this broker: check --fleet (the boards' [telemetry] "
                f"fleet) and --broker, or pass --allow-empty to push before boards join")
    return (f"no board of fleet {link.fleet!r} is in {shown}: its groups are {', '.join(groups) or 'none'}; its boards "
            f"{', '.join(devices[:20])}{' ...' if len(devices) > 20 else ''}. Pass --allow-empty to push for boards "
            "that join later")


def rollback(link: FleetLink, model: str, target: str) -> dict[str, Any]:
    """Make the target's previous desired version current again; returns it.

    Raises:
        ValidationError: Nothing was pushed to the target before, or no previous version is known.
    """
    current = link.desired.get((model, target))
    if current is None:
        raise ValidationError(f"no version of {model} was pushed to {target.replace('/', ':')}: nothing to roll back")
    if _trusted_desired(link, model, target) is None:
        raise ValidationError(f"the desired state of {model} on {target.replace('/', ':')} is not signed by your key: "
                              "someone else published it, so its previous version is not trusted either. Push a "
                              "bundle you know (edgec fleet push BUNDLE --key KEY) instead, and lock the broker down "
                              "(see Securing a fleet)")
    back = _back(current.get("previous") or _starting_version(link, model, target))
    link.desire(model, target, back).wait_for_publish(30)
    return back


def _await(link: FleetLink, model: str, desired: dict[str, Any], devices: list[str],
           timeout_s: float) -> tuple[dict[str, str], dict[str, str]]:
    """Wait until every device is live on the rollout, or failed; their states and errors."""
    def final(device: str) -> str | None:
        state = link.updates.get((device, model), {})
        if state.get("desired") != desired["version"]:
            return None
        if state.get("state") in FAILED and state.get("rollout") == desired["rollout"]:
            return state["state"]
        if state.get("state") in DONE:
            return "live"
        return None

    pending = list(reversed(devices))

    def settled() -> bool:  # each board checked once when it settles, one more check per message: O(n + messages)
        while pending and final(pending[-1]):
            pending.pop()
        return not pending

    link.wait_for(settled, timeout_s)
    with link._lock:
        states = {d: final(d) or "pending" for d in devices}
        errors = {d: link.updates.get((d, model), {}).get("error") or "" for d in devices if states[d] in FAILED}
    return states, errors


def _without_previous(desired: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a push remembers of the one before it (signature fields dropped: it is signed anew on rollback)."""
    if desired is None:
        return None
    return {k: v for k, v in desired.items() if k not in ("previous", "sig", "topic", "seq", "expires", "rollback")}


def _clear_old_blobs(link: FleetLink, previous: dict[str, Any] | None, keep: set[str]) -> None:
    """Drop the retained chunks of the version before the previous one (two versions stay on the broker).
    A blob served by URL has no chunks on the broker; its file stays in the --blob-dir."""
    older = ((previous or {}).get("previous") or {}).get("blob") or {}
    keep = keep | {((previous or {}).get("blob") or {}).get("sha256")}
    if not older or older.get("url") or older.get("sha256") in keep:
        return
    for index in range(len(older.get("chunks", []))):
        link.publish(blob_topic(link.fleet, older["sha256"], index), b"")
