"""``edgec dashboard``: the fleet live in a web browser, served from the host.

The host process subscribes to the broker (:func:`edgec.sdk.fleet.watch.subscribe`), keeps a
:class:`~edgec.sdk.fleet.view.FleetView`, and serves one page whose script listens to
``/events`` (server-sent events: the whole fleet as JSON whenever a message arrived, at most
twice a second, and every few seconds anyway so "last seen" keeps counting). The page, its
script and its style ship inside the package (``web/``): no CDN, it works in an offline lab.

Routes: ``/`` the page, ``/static/<file>``, ``/api/fleet`` one snapshot as JSON, ``/events``,
``/health`` (no token; for a container's health check).

Served beyond loopback, the page needs a token (``--token``): ``/?token=T`` once sets it as an
HttpOnly, SameSite=Strict cookie (a browser's EventSource cannot send headers); scripts send
``Authorization: Bearer T``. Anything else is a 401.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from .view import FORGET_AFTER_S, FleetView
from .view import number as _num

MAX_STATISTIC = 80  # characters of a board's statistic name shown (it is the board's string)

WEB = Path(__file__).with_name("web")
COOKIE = "edgec_dashboard"
STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class AlertRules:
    """When a board is flagged.

    Attributes:
        memory_fraction: The model cache uses at least this share of its budget.
        offline_after: A board that said nothing for this many telemetry intervals (plus
            5 s) is shown as silent, even before the broker delivers its Last Will.
        event_window_s: A ``memory_pressure`` or ``model_load_failure`` event this recent
            raises an alert.
    """

    memory_fraction: float = 0.9
    offline_after: float = 3.0
    event_window_s: float = 300.0


def board(key: tuple[str, str], d: dict[str, Any], now: float, rules: AlertRules) -> dict[str, Any]:
    """One board as the page shows it, with its alerts."""
    fleet, name = key
    status, t, event = d["status"] or {}, d["telemetry"] or {}, d["event"] or {}
    process, spool, cache = t.get("process") or {}, t.get("spool") or {}, t.get("cache") or {}
    seen_ago = now - d.get("seen", now)
    state = status.get("state", "unknown")
    interval = _num(t.get("interval_s")) or 10.0
    if state == "online" and t and seen_ago > rules.offline_after * interval + 5:
        state = "silent"
    used, budget = _num(cache.get("used_bytes")), _num(cache.get("budget_bytes"))
    out: dict[str, Any] = {
        "id": f"{fleet}/{name}", "fleet": fleet, "device": name, "state": state, "edgec": status.get("edgec"),
        "seen_s_ago": round(seen_ago, 1), "uptime_s": _num(t.get("uptime_s")),
        "rss_mb": round(_num(process.get("rss_bytes")) / 2**20, 1) if _num(process.get("rss_bytes")) else None,
        "cpu_percent": _num(process.get("cpu_percent")), "cpu_temp_c": _num(process.get("cpu_temp_c")),
        "cache_used_mb": round(used / 2**20, 1) if used is not None else None,
        "cache_budget_mb": round(budget / 2**20, 1) if budget else None,
        "spool_queued": _num(spool.get("queued")), "spool_dropped": _num(spool.get("dropped")),
        "last_event": {k: event.get(k) for k in ("kind", "message", "time")} if event else None,
        "models": [], "alerts": [],
    }
    alerts = out["alerts"]
    if state in ("offline", "silent"):
        alerts.append({"kind": "offline", "message": f"{name} is {state}" + (
            f" (last heard {seen_ago:.0f} s ago)" if state == "silent" else "")})
    if used is not None and budget and used >= rules.memory_fraction * budget:
        alerts.append({"kind": "memory", "message": f"{name}: model cache {used / budget:.0%} of its budget"})
    recent = event and _num(event.get("time")) is not None and now - event["time"] <= rules.event_window_s
    if recent and event.get("kind") in ("memory_pressure", "model_load_failure"):
        alerts.append({"kind": "memory" if event["kind"] == "memory_pressure" else "errors",
                       "message": f"{name}: {event.get('message', event['kind'])}"})
    models = t.get("models") if isinstance(t.get("models"), dict) else {}
    for model in sorted(set(models) | set(d["updates"])):
        m = models.get(model) if isinstance(models.get(model), dict) else {}
        latency = m.get("latency_ms") if isinstance(m.get("latency_ms"), dict) else {}
        update = d["updates"].get(model)
        drift = m.get("drift") if isinstance(m.get("drift"), dict) else {}
        row = {"name": model, "version": m.get("version"), "precision": m.get("precision"),
               "p50_ms": _num(latency.get("p50")), "p95_ms": _num(latency.get("p95")),
               "requests": _num(m.get("requests")), "errors": _num(m.get("errors")),
               "requests_per_s": _num(m.get("requests_per_s")), "errors_per_s": _num(m.get("errors_per_s")),
               "queue_depth": _num(m.get("queue_depth")),
               "drift": _num(drift.get("score")), "drift_alert": drift.get("alert") is True,
               "drift_statistic": drift["statistic"][:MAX_STATISTIC] if isinstance(drift.get("statistic"), str) else None,
               "history": [[round(at, 3), p50, p95] for at, p50, p95 in d["history"].get(model, ())],
               "update": {k: update.get(k) for k in ("state", "desired", "running", "progress", "error")}
               if update else None}
        out["models"].append(row)
        if (row["errors_per_s"] or 0) > 0:
            alerts.append({"kind": "errors", "message": f"{name}/{model}: {row['errors_per_s']:g} errors/s"})
        if row["drift_alert"]:
            alerts.append({"kind": "drift", "message": f"{name}/{model}: served data drifted (PSI {row['drift']:.2f} "
                           f"on {row['drift_statistic']})" if row["drift"] is not None else f"{name}/{model}: drift"})
        if update and update.get("state") in ("rolled_back", "refused", "failed"):
            alerts.append({"kind": "rollout", "message": f"{name}/{model}: update {update.get('state')}"
                           + (f": {update['error']}" if update.get("error") else "")})
    return out


def snapshot(view: FleetView, rules: AlertRules = AlertRules(), *, source: str = "") -> dict[str, Any]:
    """The whole fleet as the page draws it."""
    now = time.time()
    boards = [board(key, d, now, rules) for key, d in sorted(view.devices.items())]
    alerts = [{"board": b["id"], **a} for b in boards for a in b["alerts"]]
    if view.malformed:  # shown, never re-emitted: what was refused is not drawn anywhere
        alerts.append({"board": "broker", "kind": "invalid",
                       "message": f"{view.malformed} invalid message(s) refused; last: {view.last_malformed}"})
    return {"time": now, "source": source, "boards": boards, "malformed": view.malformed, "alerts": alerts}


class DashboardApp:
    """The ASGI app: the page, its files, one snapshot, and the event stream.

    Args:
        view: The fleet, fed by another thread under ``lock``.
        lock: Guards ``view``.
        source: Shown in the page's header (the broker's address).
        refresh_s: Longest time between two events on ``/events``.
        token: Required of every request but ``/health`` when set (see the module's doc).
    """

    def __init__(self, view: FleetView, lock: threading.Lock, *, source: str = "", rules: AlertRules = AlertRules(),
                 refresh_s: float = 5.0, token: str | None = None) -> None:
        self.view, self.lock, self.source, self.rules, self.refresh_s = view, lock, source, rules, refresh_s
        self.token = token.encode() if token else None
        self._rendered: tuple[int, float, bytes] | None = None  # (view version, when, JSON): shared by every client
        self._render_lock = threading.Lock()

    def _allowed(self, scope: dict[str, Any]) -> bool:
        if self.token is None:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.startswith(b"Bearer "):
                return hmac.compare_digest(value[7:].strip(), self.token)
            if name == b"cookie":
                for part in value.split(b";"):
                    key, _, given = part.strip().partition(b"=")
                    if key == COOKIE.encode() and hmac.compare_digest(given, self.token):
                        return True
        return False

    def state(self) -> tuple[int, bytes]:
        """The fleet as JSON, rendered at most once per change and second however many pages and scripts ask
        (10,000 boards take ~0.4 s to render: benchmarks/dashboard.py)."""
        with self._render_lock:
            version, rendered = self.view.version, self._rendered
            if rendered is not None and rendered[0] == version and time.monotonic() - rendered[1] < 1.0:
                return version, rendered[2]
            with self.lock:
                version, state = self.view.version, snapshot(self.view, self.rules, source=self.source)
            body = json.dumps(state, separators=(",", ":")).encode()
            self._rendered = (version, time.monotonic(), body)
            return version, body

    async def _state(self) -> tuple[int, bytes]:
        return await asyncio.get_running_loop().run_in_executor(None, self.state)  # the loop keeps serving

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            return await _reply(send, 405, b"only GET\n", "text/plain", extra=[(b"allow", b"GET, HEAD")])
        if path == "/health":
            return await _reply(send, 200, b"ok\n", "text/plain")
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0].encode("latin-1")
        if path == "/" and self.token is not None and given and hmac.compare_digest(given, self.token):
            cookie = f"{COOKIE}={given.decode('latin-1')}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")
            return await _reply(send, 303, b"", "text/plain", extra=[(b"location", b"/"), (b"set-cookie", cookie)])
        if not self._allowed(scope):
            return await _reply(send, 401, b"this dashboard needs its token: open /?token=TOKEN once (the one "
                                b"edgec dashboard was started with), or send Authorization: Bearer TOKEN\n",
                                "text/plain", extra=[(b"www-authenticate", b"Bearer")])
        if path == "/":
            return await _reply(send, 200, (WEB / "index.html").read_bytes(), "text/html; charset=utf-8")
        if path.startswith("/static/") and path[len("/static/"):] in STATIC:
            name = path[len("/static/"):]
            return await _reply(send, 200, (WEB / name).read_bytes(), STATIC[name])
        if path == "/api/fleet":
            return await _reply(send, 200, (await self._state())[1], "application/json")
        if path == "/events":
            return await self._events(receive, send)
        return await _reply(send, 404, b"not found: try /\n", "text/plain")

    async def _events(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]})
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch_disconnect())
        sent_version, sent_at = -1, 0.0
        try:
            await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
            while not gone.is_set():
                version = self.view.version
                if version != sent_version or time.monotonic() - sent_at >= self.refresh_s:
                    version, body = await self._state()
                    await send({"type": "http.response.body", "body": b"data: " + body + b"\n\n", "more_body": True})
                    sent_version, sent_at = version, time.monotonic()
                try:
                    await asyncio.wait_for(gone.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        except OSError:  # the browser went away mid-write
            pass
        finally:
            watcher.cancel()


async def _reply(send: Any, status: int, body: bytes, content_type: str, *, extra: list | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
               (b"content-security-policy", b"default-src 'self'; img-src 'self' data:")] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(broker: str, port: int = 1883, *, fleet: str = "+", host: str = "127.0.0.1", http_port: int = 8080,
          username: str | None = None, password: str | None = None, tls: bool = False, ca_file: Path | None = None,
          rules: AlertRules = AlertRules(), token: str | None = None, forget_after_s: float = FORGET_AFTER_S,
          on_ready: Any = None) -> None:
    """Subscribe to the broker and serve the page until interrupted.

    Args:
        token: Asked of every visitor (see the module's doc); required unless ``host`` is loopback.
        forget_after_s: A board not heard from for this long leaves the page.
        on_ready: Called with the page's port (useful with ``http_port=0``) once it answers.

    Raises:
        ValidationError: ``host:http_port`` cannot be served on (in use, no such address), or
            ``host`` is beyond loopback and no token was given.
        BrokerError: The broker cannot be reached.
        MissingDependencyError: uvicorn is not installed.
    """
    from ..._optional import need
    from ...errors import ValidationError
    from ...runtime.serve.http import bind
    from .watch import subscribe

    uvicorn = need("uvicorn", extra="runtime", purpose="to serve the dashboard")
    if not token and not loopback(host):
        raise ValidationError(f"--host {host} serves the fleet's page beyond this machine: give it a token with "
                              "--token (or EDGEC_DASHBOARD_TOKEN), e.g. --token $(openssl rand -hex 16)")
    try:
        sock = bind(host, http_port)
    except OSError as exc:
        raise ValidationError(f"cannot serve the dashboard on {host}:{http_port}: {exc.strerror or exc}; "
                              "pick another --port or --host") from None
    view = FleetView(forget_after_s)
    try:
        client, lock = subscribe(broker, port, view, fleet=fleet, username=username, password=password, tls=tls,
                                 ca_file=ca_file)
    except BaseException:
        sock.close()
        raise
    app = DashboardApp(view, lock, source=f"{'mqtts' if tls or ca_file else 'mqtt'}://{broker}:{port}", rules=rules,
                       token=token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    if on_ready is not None:
        threading.Thread(target=_when_started, args=(server, on_ready, sock.getsockname()[1]), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        client.loop_stop()
        client.disconnect()


def loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _when_started(server: Any, on_ready: Any, port: int) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        on_ready(port)
