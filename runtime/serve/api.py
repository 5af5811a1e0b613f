"""The HTTP API of ``edgec serve``, as an ASGI application: the Open Inference Protocol and edgec's own routes.

Open Inference Protocol (KServe v2, what ``tritonclient`` and KServe clients speak):
``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``,
``/v2/models/{name}[/versions/{v}]/ready``; ``POST /v2/models/{name}[/versions/{v}]/infer``
(JSON tensors, or the binary tensor data extension).

edgec's own: ``GET /health``, ``/ready``, ``/v1/models``, ``/v1/stats``, ``/metrics`` (Prometheus text);
``POST /v1/models/{name}/predict`` (JSON, ``.npy`` or ``.npz`` bodies); with the admin token
``POST /v1/models/{name}/reload``, ``GET /v1/models/{name}/capture`` and ``GET|POST /v1/measure``.

Errors are JSON ``{"error": message}`` with a status that says whose fault it is. Bodies
are read as they arrive, within ``max_request_mb``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
from concurrent.futures import Executor
from typing import Any

from ..._version import __version__
from ...errors import AccessError, DeadlineError, EdgecError, InputError, QueueFullError
from . import oip
from .bodies import decode_inputs, encode_outputs, json_cost, json_end
from .waiter import Waiter
from .http import DRAIN_LIMIT
from .measure import ARCHIVE, Measurer
from .replies import Headers, HttpError, Response, json_response
from .metrics import responses_text
from .runtime import Runtime

log = logging.getLogger("edgec.runtime")
# Bodies above this are decoded off the event loop (JSON of a large tensor takes milliseconds).
DECODE_INLINE_BYTES = 2**20
# Models whose last run took less than this run on the event loop when they are idle.
INLINE_MAX_S = 0.001
_NAME = r"([A-Za-z0-9_.\-]+)"
_V1 = re.compile(rf"^/v1/models/{_NAME}/(predict|reload)$")
_V2 = re.compile(rf"^/v2/models/{_NAME}(?:/versions/{_NAME})?(?:/(ready|infer))?$")
_CAPTURE = re.compile(rf"^/v1/models/{_NAME}/capture$")
_REPOSITORY = re.compile(rf"^/v2/repository/(index|models/{_NAME}/(load|unload))$")


def _route_kind(method: str, path: str) -> str:
    """The kind of route a request went to, from a fixed set (a metrics label no request can make up)."""
    if path in ("/health", "/ready", "/v2/health/live", "/v2/health/ready"):
        return "health"
    if path == "/metrics":
        return "metrics"
    if method == "POST":
        v1, v2 = _V1.match(path), _V2.match(path)
        if v1 and v1.group(2) == "reload":
            return "reload"
        return "infer" if v1 or (v2 and v2.group(3) == "infer") else "other"
    return "metadata" if path in ("/v2", "/v1/models", "/v1/stats") or _V2.match(path) else "other"


class Api:
    """The ASGI application answering from a :class:`~edgec.runtime.serve.runtime.Runtime`.

    Args:
        runtime: The serving core.
        pool: Where slow work goes (reloads, cold loads, decoding large bodies).
    """

    def __init__(self, runtime: Runtime, pool: Executor) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self._pool = pool
        self.max_body = int(self.config.max_request_mb * 2**20)
        self.max_array_bytes = self.config.batcher.max_bytes
        self._waiter: Waiter | None = None
        self._inflight = 0  # requests being answered now
        self._pending = 0  # body bytes held by them (received, being decoded or run)
        self.max_pending = int(self.config.http.max_pending_mb * 2**20)
        self.responses: dict[tuple[str, int], int] = {}  # (route kind, status) -> count, for /metrics
        self.measurer = Measurer(self.config)
        self.extra_metrics: list[Any] = []  # more Prometheus text for /metrics (the gRPC server's calls)
        token = self.config.admin_token
        self._token = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = Headers(scope["headers"])
        self._inflight += 1
        held = [0]  # this request's body bytes counted in self._pending
        try:
            if scope["path"] == "/v1/measure":
                response = await self._measure(scope["method"], headers, receive, scope.get("query_string", b""))
            else:
                response = await self._route(scope["method"], scope["path"], headers, receive, held)
        except HttpError as exc:
            response = json_response(exc.status, {"error": str(exc)}, exc.headers)
            if exc.close:
                response.headers["connection"] = "close"
        except Exception as exc:  # nothing a request does may take the server down
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = json_response(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            self._inflight -= 1
            self._pending -= held[0]
        kind = _route_kind(scope["method"], scope["path"])
        self.responses[(kind, response.status)] = self.responses.get((kind, response.status), 0) + 1
        head = [(b"content-type", response.ctype.encode()), (b"content-length", b"%d" % len(response.body))]
        head += [(k.encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": head})
        await send({"type": "http.response.body", "body": response.body})

    async def _route(self, method: str, path: str, headers: Headers, receive: Any, held: list[int]) -> Response:
        rt = self.runtime
        if method == "GET":
            if path == "/health":
                health = rt.health()
                return json_response(200 if health["status"] == "ok" else 503, health)
            if path == "/v2/health/live":
                return json_response(200, {"live": True})
            if path in ("/ready", "/v2/health/ready"):
                return json_response(200 if rt.ready else 503, {"ready": rt.ready, "failed": rt.failed})
            if path == "/v2":
                return json_response(200, {"name": "edgec", "version": __version__, "extensions": list(oip.EXTENSIONS)})
            if path == "/v1/models":
                return json_response(200, {"models": rt.models()})
            if path == "/v1/stats":
                return json_response(200, rt.stats())
            if path == "/metrics":
                text = rt.metrics() + responses_text(self.responses) + "".join(f() for f in self.extra_metrics)
                return Response(200, text.encode(), "text/plain; version=0.0.4")
            match = _V2.match(path)
            if match and match.group(3) != "infer":
                return self._model_get(*match.groups())
            if capture := _CAPTURE.match(path):
                return await self._capture(capture.group(1), headers)
            raise HttpError(404, f"no route GET {path}")
        if method != "POST":
            raise HttpError(405, f"method {method} is not served: use GET or POST", {"Allow": "GET, POST"})
        if repository := _REPOSITORY.match(path):
            return await self._repository(repository.group(3) or "index", repository.group(2), headers, receive, held)
        v1, v2 = _V1.match(path), _V2.match(path)
        if not (v1 or (v2 and v2.group(3) == "infer")):
            raise HttpError(404, f"no route POST {path}")
        name = (v1 or v2).group(1)
        if v1 and v1.group(2) == "reload":
            self._authorize(headers)
        try:
            body = await self._body(headers, receive, held)
            self._hold(held, json_cost(body, json_end(body, headers, bool(v2) or v1.group(2) == "reload")))
        except HttpError as exc:  # too large, or more than the server holds now: still this model's error
            rt.refused(name, exc)
            raise
        try:
            if v2:
                return await self._infer(name, v2.group(2), headers, body)
            if v1.group(2) == "reload":
                return await self._reload(name, body)
            return await self._predict(name, headers, body)
        except KeyError:
            raise HttpError(404, rt.unknown(name)) from None
        except InputError as exc:
            raise HttpError(400, str(exc)) from None
        except AccessError as exc:
            raise HttpError(403, str(exc)) from None
        except QueueFullError as exc:
            raise HttpError(429, str(exc), {"Retry-After": f"{max(1, round(exc.retry_after_s))}"}) from None
        except DeadlineError as exc:
            raise HttpError(504, str(exc)) from None
        except EdgecError as exc:  # BundleError and kin: the model, not the request
            raise HttpError(409 if v1 and v1.group(2) == "reload" else 503, str(exc)) from None

    async def _capture(self, name: str, headers: Headers) -> Response:
        """The samples kept for a model, as one ``.npz`` (admin token: they are the board's served data)."""
        self._authorize(headers)
        rt = self.runtime
        if name not in rt.batchers:
            raise HttpError(404, rt.unknown(name))
        if not rt.capture.config.enabled:
            raise HttpError(409, "data capture is off on this board: set [capture] enabled = true in its runtime.toml")
        body = await asyncio.get_running_loop().run_in_executor(self._pool, rt.capture.pull, name)
        return Response(200, body, "application/octet-stream",
                        {"content-disposition": f'attachment; filename="{name}-capture.npz"'})

    async def _repository(self, verb: str, name: str | None, headers: Headers, receive: Any,
                          held: list[int]) -> Response:
        """The repository extension (:mod:`.repository`): index, load and unload by name, with the admin token."""
        self._authorize(headers)
        body = await self._body(headers, receive, held)
        try:
            data = await asyncio.get_running_loop().run_in_executor(self._pool, self.runtime.repository.http, verb,
                                                                    name, body)
        except KeyError:
            raise HttpError(404, f"no model {name!r} in this board's repository (its models and the bundle folders "
                            "in model_roots)") from None
        except InputError as exc:
            raise HttpError(400, str(exc)) from None
        except EdgecError as exc:
            raise HttpError(409, f"model {name} was not loaded: {exc}") from None
        return json_response(200, data) if data is not None else Response(200, b"")

    async def _measure(self, method: str, headers: Headers, receive: Any, query: bytes) -> Response:
        """POST: a candidate bundle (an uncompressed tar) loaded, checked and timed in a child process
        (:mod:`.measure`), 422 when the candidate itself fails there, with the reason; GET: this board."""
        if method not in ("GET", "POST"):
            raise HttpError(405, f"method {method} is not served: GET or POST /v1/measure", {"Allow": "GET, POST"})
        self._authorize(headers)
        measurer = self.measurer
        if not measurer.config.enabled:
            raise HttpError(409, "measuring candidates is off on this board: set [measure] enabled = true in its "
                            "runtime.toml", close=True)
        if method == "GET":
            return json_response(200, {"board": measurer.board(), "max_mb": measurer.config.max_mb,
                                       "busy": measurer.busy})
        try:
            params = measurer.params(query)
        except InputError as exc:
            raise HttpError(400, str(exc), close=True) from None
        with measurer.claim() as folder:
            if folder is None:
                raise HttpError(429, "this board is measuring another candidate: retry when it is done",
                                {"Retry-After": "5"}, close=True)
            with open(folder / ARCHIVE, "xb") as sink:
                await self._body(headers, receive, [0], limit=measurer.max_bytes, sink=sink)
            served = self._served()
            try:
                result = await asyncio.get_running_loop().run_in_executor(self._pool, measurer.run, folder, params)
            except EdgecError as exc:
                raise HttpError(422, str(exc)) from None
            result["serving_requests"] = self._served() - served  # requests answered meanwhile (they share the CPU)
        return json_response(200, result)

    def _served(self) -> int:
        return sum(n for (kind, _), n in self.responses.items() if kind == "infer")

    # -- bodies ------------------------------------------------------------------------------------
    def _authorize(self, headers: Headers) -> None:
        """Admin routes: 403 when no ``admin_token`` is configured, 401 without the right one."""
        if self._token is None:
            raise HttpError(403, "admin routes are off: set admin_token in runtime.toml to reload models over HTTP")
        given = headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, self._token):
            raise HttpError(401, "admin routes need the header Authorization: Bearer <admin_token>",
                            {"WWW-Authenticate": 'Bearer realm="edgec"'})

    async def _body(self, headers: Headers, receive: Any, held: list[int], *, limit: int | None = None,
                    sink: Any = None) -> bytes:
        """The request body, read as it arrives: 413 past ``limit`` (default ``max_body``), 503 past
        ``max_pending`` over all requests, 408 past the body timeout (from the HTTP layer). With ``sink``
        (a file) the body is written there as it arrives instead, and not held."""
        limit = self.max_body if limit is None else limit
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HttpError(400, f"bad Content-Length {declared!r}", close=True)
            if int(declared) > limit:  # a client waiting for 100 Continue sends nothing more: close
                expecting = "100-continue" in headers.get("expect", "").lower()
                raise HttpError(413, f"body of {declared} bytes is over the {limit} byte limit",
                                close=expecting or int(declared) > DRAIN_LIMIT)
        chunks, size = [], 0
        while True:  # (the HTTP layer closes a connection whose body is late: receive() then ends)
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the client went away", close=True)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body is over the {limit} byte limit", close=True)
            if sink is not None:
                sink.write(chunk)
            else:
                if self._pending + len(chunk) > self.max_pending:
                    raise HttpError(503, f"the server holds {self.max_pending} bytes of request bodies already: "
                                    "retry shortly", {"Retry-After": "1"}, close=True)
                self._pending += len(chunk)
                held[0] += len(chunk)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def _hold(self, held: list[int], cost: int) -> None:
        """Count what decoding a JSON body will build (Python lists and floats, many times its size)
        against ``max_pending`` with the bodies themselves: 413 when it alone is over, 503 while others hold it."""
        if cost == 0:
            return
        if held[0] + cost > self.max_pending:
            raise HttpError(413, f"this JSON body decodes to about {(held[0] + cost) >> 20} MB, over the "
                            f"{self.max_pending >> 20} MB the server holds for requests ([http] max_pending_mb): send "
                            "the tensors binary (application/x-npy or x-npz on /v1, the binary extension on /v2)")
        if self._pending + cost > self.max_pending:
            raise HttpError(503, f"the server holds {self.max_pending} bytes of requests already: retry shortly",
                            {"Retry-After": "1"})
        self._pending += cost
        held[0] += cost

    async def _decode(self, body: bytes, decode: Any, *args: Any) -> Any:
        if len(body) > DECODE_INLINE_BYTES:
            return await asyncio.get_running_loop().run_in_executor(self._pool, decode, body, *args)
        return decode(body, *args)

    # -- models ------------------------------------------------------------------------------------
    async def _decode_for(self, name: str, body: bytes, decode: Any, *args: Any) -> Any:
        """:meth:`_decode` for a request to model ``name``: a body that does not decode counts as its error."""
        try:
            return await self._decode(body, decode, *args)
        except (InputError, HttpError) as exc:
            self.runtime.refused(name, exc)
            raise

    def _model_get(self, name: str, version: str | None, verb: str | None) -> Response:
        rt = self.runtime
        try:
            manifest, current = rt.manifest(name), rt.version(name)
        except KeyError:
            raise HttpError(404, rt.unknown(name)) from None
        except EdgecError as exc:
            raise HttpError(503, f"model {name} is not served: {exc}") from None
        if version is not None and version != current:
            raise HttpError(404, f"model {name} has no version {version!r}: it serves {current}")
        if verb == "ready":
            ready = rt.model_ready(name)
            return json_response(200 if ready else 503, {"name": name, "ready": ready})
        return json_response(200, oip.model_metadata(name, current, rt.platform(name), manifest.inputs,
                                                     manifest.outputs))

    async def _model(self, name: str) -> Any:
        """The loaded model; an evicted one is loaded off the loop."""
        rt = self.runtime
        if name not in rt.batchers:
            raise KeyError(name)
        model = rt.cache.peek(name)
        if model is None:
            model = await asyncio.get_running_loop().run_in_executor(self._pool, rt.cache.get, name)
        return model

    async def _infer(self, name: str, version: str | None, headers: Headers, body: bytes) -> Response:
        model = await self._model(name)
        current = self.runtime.version(name)
        if version is not None and version != current:
            raise HttpError(404, f"model {name} has no version {version!r}: it serves {current}")
        specs = {t.name: t for t in model.inputs}
        request = await self._decode_for(name, body, oip.parse_infer, headers.get(oip.HEADER_LENGTH), specs)
        outputs = await self._run(name, request.inputs, None)
        data, head_length = oip.encode_outputs(name, current, outputs, request)
        if head_length is None:
            return Response(200, data)
        return Response(200, data, "application/octet-stream", {"Inference-Header-Content-Length": str(head_length)})

    async def _predict(self, name: str, headers: Headers, body: bytes) -> Response:
        model = await self._model(name)
        feeds = await self._decode_for(name, body, decode_inputs, headers.get("content-type", "application/json"),
                                       model, self.max_array_bytes)
        deadline = headers.get("x-deadline-ms")
        try:
            deadline_s = float(deadline) / 1000 if deadline else None
        except ValueError:
            deadline_s = math.nan
        if deadline_s is not None and not math.isfinite(deadline_s):
            raise InputError(f"X-Deadline-Ms {deadline!r} is not a number of milliseconds")
        outputs = await self._run(name, feeds, deadline_s)
        data, ctype = encode_outputs(name, outputs, headers.get("accept", ""))
        return Response(200, data, ctype)

    async def _reload(self, name: str, body: bytes) -> Response:
        try:
            data = json.loads(body) if body else {}
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"reload body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError('reload body must be a JSON object: {"path": "/opt/models/digits"} or {} for the '
                             "model's configured folder")
        path = data.get("path")
        entry = await asyncio.get_running_loop().run_in_executor(self._pool, self.runtime.reload, name, path)
        return json_response(200, {"reloaded": entry})

    async def _run(self, name: str, feeds: dict[str, Any], deadline_s: float | None) -> dict[str, Any]:
        """Submit to the model's batcher and await the answer from the loop."""
        timeout = deadline_s if deadline_s is not None else self.config.request_timeout_s
        if self._waiter is None:  # made on the server's own loop, at its first request
            self._waiter = Waiter(asyncio.get_running_loop())
        # The only request in flight, for a model that runs in well under a millisecond, runs here at
        # once: handing it to the batcher's worker and back costs more than the run (~200 µs measured
        # on 2 cores). With other requests in flight it goes to the worker, to be batched with them.
        last = self.runtime.batchers[name].last_run_s
        inline = 0 < last < INLINE_MAX_S
        if inline:
            await asyncio.sleep(0)  # let requests that arrived with this one start: then it is not alone
            inline = self._inflight == 1
        future = self.runtime.submit(name, feeds, deadline_s=deadline_s, inline=inline)
        if future.done():
            return future.result()
        return await self._waiter.wait(future, timeout + 1.0, f"model {name} did not answer within {timeout:g}s")
