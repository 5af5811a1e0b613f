"""The board's update agent: desired model versions from the fleet, downloaded, checked, switched, watched.

Topics (:mod:`edgec.runtime.topics`), under ``edgec/<fleet>/``, retained, QoS 1:

- ``desired/<model>/device/<id>``, ``desired/<model>/group/<g>``, ``desired/<model>/all`` (retained, from
  ``edgec fleet push``): the version a board should run, and its blob. The most specific one naming this board wins.
- ``blobs/<sha256>/<index>`` (retained): the blob's chunks (:mod:`.delivery`), or a web server's (``blob.url``).
- ``<device>/update/<model>`` (retained, from the board): desired, running, state
  (``downloading``, ``verifying``, ``checking``, ``watching``, ``live``, ``rolled_back``,
  ``refused``, ``failed``), progress, and the reason of a failure.
- ``<device>/fleet`` (retained, from the board): its groups, tags and running versions (who a push reaches).

An update is switched in through the runtime's reload (signature, sha256, a child-process
load and the golden parity check first; in-flight requests are answered by the old version),
then watched for ``watch_requests`` requests or ``watch_s`` seconds: more failures than
``max_failure_rate`` put the previous version back. A version that failed is not retried
until another push. Versions live side by side under ``store/<model>/<version>``.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import BundleError, EdgecError, IntegrityError
from ..fleet_config import FleetConfig, TelemetryConfig
from .admission import (bundle_version, downgrade, failure_key, fetch_problem, local_version, manifest_device,
                        release_of, wrong_device)
from .control import check as check_control
from ..bundle.archive import inside, is_inside
from .delivery import Blob, Download, clean_downloads
from ..files import read_json_object, write_atomic
from .publisher import IDLE_WAKE_S, Publisher
from .urlsource import UrlSource
from ..serve.runtime import Runtime
from ..topics import blob_topic, desired_topic, device_topic, fleet_root

log = logging.getLogger("edgec.fleet")
RESUBSCRIBE_S = 10.0  # ask again for chunks that did not come (then 20 s, 40 s... up to 5 minutes)
# A bundle version (the first 12 hex digits of its model file's sha256), the only form a
# version from the broker may take before it names a folder.
VERSION = re.compile(r"[0-9a-f]{12}")
# A desired state is a few hundred bytes plus one digest per chunk (a 1 GB bundle: ~270 kB).
MAX_DESIRED_BYTES = 1 << 20


class Updater:
    """Takes model updates for one board. ``start()`` connects and works on a thread of its own."""

    def __init__(self, runtime: Runtime, telemetry: TelemetryConfig, fleet: FleetConfig, publisher: Publisher) -> None:
        self.runtime, self.mqtt_config, self.config = runtime, telemetry, fleet
        self.publisher = publisher  # the board's one MQTT connection, shared with telemetry and commands
        self.fleet, self.base = telemetry.fleet, fleet_root(telemetry.fleet)
        self.device = telemetry.device
        self.targets = (f"device/{self.device}", *(f"group/{g}" for g in fleet.groups), "all")  # most specific first
        self.store = fleet.store
        self.desired: dict[str, dict[str, dict[str, Any]]] = {}  # model -> target -> payload
        self.states: dict[str, dict[str, Any]] = {}  # model -> what was last reported
        self._events: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._download: Download | None = None
        self._asked: dict[int, tuple[float, int]] = {}  # chunk index -> (when to ask again, times asked before)
        self._moved = 0.0  # when a chunk last came: chunks are asked again only once delivery stalled
        self.trusted = runtime.cache.trusted  # None: unsigned control messages (allow_unsigned = true)
        # Control messages refused on paho's thread, reported by the worker (bounded: a flood drops the oldest).
        self._refused: collections.deque[tuple[str, dict[str, Any], str]] = collections.deque(maxlen=8)
        self._stopping = threading.Event()
        self._record_path = self.store / "fleet-state.json"
        self.record: dict[str, dict[str, Any]] = {}
        self.client: Any = None
        self._started: dict[str, str] = {}  # the versions of the configured bundles: a rollback's last resort
        self._thread = threading.Thread(target=self._work, name="edgec-fleet-update", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Updater:
        if self.trusted is None:
            log.warning("[fleet] allow_unsigned = true: ANYONE who can publish on the broker can change the models "
                        "this board serves. Set trusted_keys (edgec keys new) to take only signed updates")
        self.store.mkdir(parents=True, exist_ok=True)
        self._started = {m.name: v for m in self.runtime.config.models if (v := bundle_version(m.path))}
        clean_downloads(self.store / ".downloads")
        self.record = read_json_object(self._record_path)
        self._restore()
        self.client = self.publisher.client  # desired states and chunks routed here; commands stay the agent's
        for pattern in (desired_topic(self.fleet, "+", "#"), blob_topic(self.fleet, "+", "+")):
            self.client.message_callback_add(pattern, self._on_message)
        self.publisher.connect_listeners.append(lambda client: self._on_connect(client, None, None, None))
        if self.publisher.connected:  # (started after the connection came up)
            self._on_connect(self.client, None, None, None)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._events.put("stop")
        if self._thread.is_alive():  # (a server stopped before it started never ran it)
            self._thread.join(10)
        if self.client is not None:
            for pattern in (desired_topic(self.fleet, "+", "#"), blob_topic(self.fleet, "+", "+")):
                self.client.message_callback_remove(pattern)
        with self._lock:
            if self._download is not None:
                self._download.close()

    # -- MQTT (paho's thread) ---------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            return
        client.subscribe([(desired_topic(self.fleet, "+", target), 1) for target in self.targets])
        self._publish_membership()
        with self._lock:
            states = list(self.states.values())
            self._asked.clear()  # a new connection has no subscriptions: ask again
        for state in states:
            self._publish(state)
        self._events.put("connected")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        parts = message.topic[len(self.base) + 1:].split("/")
        if parts[0] == "blobs" and len(parts) == 3 and parts[2].isdigit():
            index = int(parts[2])
            with self._lock:
                download = self._download
                if download is not None and download.blob.sha256 == parts[1]:
                    download.accept(index, message.payload)  # written to disk here, in order or not
                    self._asked.pop(index, None)
                    self._moved = time.monotonic()
            client.unsubscribe(message.topic)
            self._events.put("chunk")
        elif parts[0] == "desired" and len(parts) >= 3:
            model, target = parts[1], "/".join(parts[2:])
            if model not in {m.name for m in self.runtime.config.models} or target not in self.targets:
                return  # another board's model or target: nothing of it is kept
            if len(message.payload) > MAX_DESIRED_BYTES:
                log.warning("ignored a desired state of %d bytes on %s", len(message.payload), message.topic)
                return
            try:
                payload = json.loads(message.payload) if message.payload else None
            except ValueError:
                log.warning("ignored a desired state on %s that is not JSON", message.topic)
                return
            if payload is not None and not isinstance(payload, dict):
                log.warning("ignored a desired state on %s that is not a JSON object", message.topic)
                return
            if payload is not None and self.trusted is not None:
                try:
                    check_control(payload, message.topic, self.trusted, newest_seq=self._newest_seq(model))
                except EdgecError as exc:  # never stored: a forged message cannot shadow the real one
                    self._refused.append((model, payload, str(exc)))
                    self._events.put("refused")
                    return
            with self._lock:
                slot = self.desired.setdefault(model, {})
                if payload is None:
                    slot.pop(target, None)
                else:
                    slot[target] = payload
            self._events.put("desired")

    def _publish(self, state: dict[str, Any]) -> None:
        if self.client is not None:  # (started: before, the connect publishes every state)
            self.publisher.publish_latest(device_topic(self.fleet, self.device, f"update/{state['model']}"),
                                          json.dumps(state).encode())

    def _publish_membership(self) -> None:
        if self.client is not None:
            body = {"device": self.device, "groups": list(self.config.groups), "tags": dict(self.config.tags),
                    "models": self._running_versions(), "started": self._started, "time": time.time()}
            self.publisher.publish_latest(device_topic(self.fleet, self.device, "fleet"), json.dumps(body).encode())

    # -- the work (its own thread) -----------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                self._events.get(timeout=IDLE_WAKE_S)  # every change puts an event
            except queue.Empty:
                pass
            while self._refused:
                model, payload, reason = self._refused.popleft()
                self._report(model, payload, "refused", error=reason)
                self.runtime.alert(f"refused a control message for model {model}: {reason}", "control_refused")
            for model in list(self.desired):
                if self._stopping.is_set():
                    return
                want = self._wanted(model)
                if want is None:
                    continue
                try:
                    self._converge(model, want)
                except Exception as exc:  # one bad update must not stop the agent, nor be retried in a loop
                    log.exception("update of %s failed", model)
                    self._fail(model, want, "failed", str(exc) if isinstance(exc, EdgecError)
                               else f"{type(exc).__name__}: {exc}")

    def _wanted(self, model: str) -> dict[str, Any] | None:
        with self._lock:
            slot = self.desired.get(model, {})
            return next((slot[t] for t in self.targets if t in slot), None)

    def _converge(self, model: str, want: dict[str, Any]) -> None:
        version = want.get("version")
        if isinstance(version, str) and self.runtime.running_version(model) == version:
            self._acted_on(model, want)
            if self.states.get(model, {}).get("state") != "live" or self.states[model].get("desired") != version:
                self._report(model, want, "live")
            return
        entry = self.record.get(model, {})
        if failure_key(want) in entry.get("failed", []):
            return  # refused or rolled back already, and said so once; waits for another push
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            return self._fail(model, want, "refused", f"the desired version {str(version)[:40]!r} is not a bundle "
                              "version (12 lowercase hex digits): nothing was fetched or removed")
        if self.trusted is not None and (why := downgrade(entry, version, want)):
            return self._fail(model, want, "refused", why)
        folder = inside(self.store, self.store / model / version)
        if want.get("blob") is None:  # a rollback to a version the board has (its starting one): nothing to fetch
            folder = local_version(self.runtime.config.models, self.store, model, version)
            if folder is None:
                return self._fail(model, want, "refused", f"version {version} is not on this board, and the desired "
                                  "state carries no bundle to fetch it from: push that bundle")
        else:
            try:
                blob = Blob.from_dict(want.get("blob"))
            except BundleError as exc:
                return self._fail(model, want, "refused", str(exc))
            problem = fetch_problem(want, blob, self.store, self.runtime.cache.budget_bytes, self.config.blob_urls,
                                    signed=self.trusted is not None)
            if problem:
                return self._fail(model, want, "refused", problem)
            if not (folder / "manifest.json").is_file() and not self._fetch(model, want, blob, folder):
                return  # superseded, or stopping
        ours = is_inside(self.store, folder)  # a folder this agent may remove (not a configured bundle)
        wrong = wrong_device(manifest_device(folder), want) or (  # the bundle's own (signed) manifest decides
            self.trusted is not None and downgrade(entry, version, want, folder, self._current_folder(model)))
        if wrong:
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
            return self._fail(model, want, "refused", wrong)
        self._report(model, want, "checking")
        self._acted_on(model, want)
        previous, old_version = self._current_folder(model), self.runtime.running_version(model)
        try:
            self.runtime.reload(model, str(folder))
        except EdgecError as exc:
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
            state = "refused" if isinstance(exc, IntegrityError) else "rolled_back"
            return self._fail(model, want, state, str(exc))
        failure = self._watch(model, want)
        if failure is not None:
            if previous is not None:
                self.runtime.reload(model, str(previous))
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
            return self._fail(model, want, "rolled_back", failure)
        entry = self.record.setdefault(model, {})
        replaced = [v for v in entry.get("replaced", []) if v != version]
        if old_version is not None and old_version != version:
            replaced = [*replaced, old_version][-20:]
        entry.update(current=str(folder), previous=str(previous) if previous else None, replaced=replaced,
                     release=max(entry.get("release", 0), release_of(folder)))
        self._write_record()
        self._prune(model, keep={folder, previous})
        self._report(model, want, "live")
        self._publish_membership()

    def _fetch(self, model: str, want: dict[str, Any], blob: Blob, folder: Path) -> bool:
        """Download the blob chunk by chunk; False when the desired version changed meanwhile."""
        download = Download(self.store / ".downloads", blob)
        with self._lock:  # chunks from the broker are routed to it; a URL's come from a UrlSource thread
            self._download, self._asked, self._moved = (download if blob.url is None else None), {}, time.monotonic()
        web = UrlSource(blob.url, download, self._lock, lambda: self._events.put("chunk")).start() if blob.url else None
        last_report = 0.0
        try:
            while not download.complete:
                if self._stopping.is_set() or self._wanted(model) != want:
                    return False
                if web is None:
                    self._ask(download)
                elif web.failed:
                    raise BundleError(f"the bundle could not be downloaded: {web.failed}")
                if time.monotonic() - last_report > 1.0:
                    last_report = time.monotonic()
                    self._report(model, want, "downloading", progress=round(download.done / len(blob.chunks), 3),
                                 resumed_from_chunk=download.resumed_from, error=web and web.error)
                try:
                    self._events.get(timeout=0.5)
                except queue.Empty:
                    pass
            self._report(model, want, "verifying", progress=1.0, received_bytes=download.received_bytes)
            with self._lock:
                self._download = None
            download.finish(folder)
            return True
        finally:
            if web is not None:
                web.stop()
            with self._lock:
                if self._download is download:
                    self._download = None
            download.close()

    def _ask(self, download: Download) -> None:
        """Subscribe to the next chunks; ask again for ones asked long ago only when none came for a while (a
        retained chunk asked twice is sent twice: a slow board re-asking what is on its way multiplies traffic)."""
        now = time.monotonic()
        with self._lock:
            stalled = now - self._moved >= RESUBSCRIBE_S
            wanted = [i for i in download.wanted(self.config.window)
                      if i not in self._asked or (stalled and now >= self._asked[i][0])]
            for i in wanted:
                tries = self._asked[i][1] + 1 if i in self._asked else 0
                self._asked[i] = (now + min(300.0, RESUBSCRIBE_S * 2 ** tries), tries)
        if wanted and self.client is not None and self.client.is_connected():
            self.client.subscribe([(blob_topic(self.fleet, download.blob.sha256, i), 1) for i in wanted])

    def _watch(self, model: str, want: dict[str, Any]) -> str | None:
        """Watch the new version's first requests; the reason to roll back, or None."""
        latency = self.runtime.latency.get(model)
        if latency is None or (self.config.watch_requests == 0 and self.config.watch_s == 0):
            return None
        self._report(model, want, "watching")
        count0, failures0 = latency.count + latency.failures, latency.failures
        until = time.monotonic() + self.config.watch_s
        while time.monotonic() < until and not self._stopping.is_set():
            if latency.count + latency.failures - count0 >= self.config.watch_requests > 0:
                break
            time.sleep(0.1)
        seen = latency.count + latency.failures - count0
        failed = latency.failures - failures0
        if seen and failed / seen > self.config.max_failure_rate:
            return (f"{failed} of its first {seen} requests failed ({100 * failed / seen:.0f}% > "
                    f"{100 * self.config.max_failure_rate:g}%): the previous version is back")
        return None

    # -- state ------------------------------------------------------------------------------------
    def _fail(self, model: str, want: dict[str, Any], state: str, error: str) -> None:
        log.warning("update of %s to %s %s: %s", model, want.get("version"), state, error)
        entry = self.record.setdefault(model, {})
        entry["failed"] = [*entry.get("failed", [])[-9:], failure_key(want)]
        self._write_record()
        self._report(model, want, state, error=error)
        self.runtime.alert(f"update of model {model} to {want.get('version')} {state}: {error}", "model_update_failure")

    def _report(self, model: str, want: dict[str, Any], state: str, **extra: Any) -> None:
        report = {"model": model, "device": self.device, "desired": want.get("version"), "rollout": want.get("rollout"),
                  "running": self.runtime.running_version(model), "state": state, "time": time.time(),
                  **{k: v for k, v in extra.items() if v is not None}}  # (an error only when there is one)
        with self._lock:
            self.states[model] = report
        self._publish(report)

    def _running_versions(self) -> dict[str, str | None]:
        return {m.name: self.runtime.running_version(m.name) for m in self.runtime.config.models}

    def _current_folder(self, model: str) -> Path | None:
        loaded = self.runtime.cache.peek(model)
        return Path(loaded.path) if loaded is not None else None

    def _write_record(self) -> None:
        write_atomic(self._record_path, json.dumps(self.record, indent=2).encode())

    def _restore(self) -> None:
        """After a restart: serve the version the fleet last switched to, not the configured one."""
        for model, entry in self.record.items():
            current = entry.get("current") if isinstance(entry, dict) else None
            if not isinstance(current, str) or not is_inside(self.store, Path(current)):
                continue  # only version folders this agent wrote under its store
            if Path(current).is_dir() and self._current_folder(model) != Path(current):
                try:
                    self.runtime.reload(model, current)
                except (EdgecError, KeyError) as exc:
                    log.warning("could not restore %s from %s: %s", model, current, exc)

    def _prune(self, model: str, keep: set[Path | None]) -> None:
        for folder in (self.store / model).iterdir():
            # Only version folders this agent made: never a link, never anything else.
            if folder.is_dir() and not folder.is_symlink() and VERSION.fullmatch(folder.name) and folder not in keep:
                shutil.rmtree(inside(self.store, folder), ignore_errors=True)

    def _newest_seq(self, model: str) -> int | None:
        seq = self.record.get(model, {}).get("seq")
        return seq if isinstance(seq, int) else None

    def _acted_on(self, model: str, want: dict[str, Any]) -> None:
        """Remember the newest signed message acted on: older ones are replays from now on."""
        seq = want.get("seq")
        if self.trusted is None or not isinstance(seq, int) or seq <= (self._newest_seq(model) or 0):
            return
        self.record.setdefault(model, {})["seq"] = seq
        self._write_record()

