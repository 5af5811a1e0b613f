"""The edgec HTTP API: what each route does with the serving core, and how bodies become arrays.

Endpoints: ``GET /health``, ``GET /ready``, ``GET /v1/models``, ``POST
/v1/models/{name}/predict`` (JSON, or ``.npy``/``.npz`` bodies), ``POST
/v1/models/{name}/reload``, ``GET /metrics`` (Prometheus text), ``GET /v1/stats``. Errors are
JSON ``{"error": message}`` with a status that says whose fault it is.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from ..errors import DeadlineError, EdgecError, InputError, QueueFullError
from .arrays import load_npy, npy_bytes, npz_bytes, read_npz
from .http import Request, Response, error_response, json_response
from .serving import Runtime

# Bodies above this are decoded off the event loop (JSON of a large tensor takes milliseconds).
_DECODE_INLINE_BYTES = 2**20
_ROUTE = re.compile(r"^/v1/models/([A-Za-z0-9_.\-]+)/(predict|reload)$")


class Api:
    """Answers HTTP requests from a :class:`~edgec.runtime.serving.Runtime`.

    Args:
        runtime: The serving core.
        loop: The event loop the HTTP server runs on.
        pool: Where slow work goes (reloads, cold loads, decoding large bodies).
        max_array_bytes: Most bytes a request's arrays may take once decoded.
    """

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, pool: Executor, *,
                 max_array_bytes: int) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self._loop = loop
        self._pool = pool
        self.max_array_bytes = max_array_bytes

    async def __call__(self, request: Request) -> Response:
        rt = self.runtime
        if request.method == "GET":
            path = request.path
            if path == "/health":
                return json_response(200, {"status": "ok"})
            if path == "/ready":
                return json_response(200 if rt.ready else 503, {"ready": rt.ready, "failed": rt.failed})
            if path == "/v1/models":
                return json_response(200, {"models": rt.models()})
            if path == "/v1/stats":
                return json_response(200, rt.stats())
            if path == "/metrics":
                return Response(200, rt.metrics().encode(), "text/plain; version=0.0.4")
            return error_response(404, f"no route GET {path}")
        if request.method != "POST":
            return error_response(405, f"method {request.method} is not served: use GET or POST", {"Allow": "GET, POST"})
        match = _ROUTE.match(request.path)
        if not match:
            return error_response(404, f"no route POST {request.path}")
        name, verb = match.groups()
        try:
            if verb == "reload":
                data = json.loads(request.body) if request.body else {}
                path = data.get("path") if isinstance(data, dict) else None
                entry = await self._loop.run_in_executor(self._pool, rt.reload, name, path)
                return json_response(200, {"reloaded": entry})
            return await self._predict(name, request)
        except KeyError:
            return error_response(404, f"unknown model {name!r}; serving {', '.join(sorted(rt.batchers)) or 'none'}")
        except InputError as exc:
            return error_response(400, str(exc))
        except QueueFullError as exc:
            return error_response(429, str(exc), {"Retry-After": f"{max(1, round(exc.retry_after_s))}"})
        except DeadlineError as exc:
            return error_response(504, str(exc))
        except EdgecError as exc:  # BundleError and kin: the model, not the request
            return error_response(503 if verb == "predict" else 409, str(exc))
        except ValueError as exc:  # includes json.JSONDecodeError
            return error_response(400, f"bad request: {exc}")

    async def _predict(self, name: str, request: Request) -> Response:
        rt = self.runtime
        if name not in rt.batchers:
            raise KeyError(name)
        model = rt.cache.peek(name)
        if model is None:  # evicted or never loaded: load off the loop
            model = await self._loop.run_in_executor(self._pool, rt.cache.get, name)
        ctype = request.headers.get("content-type", "application/json")
        if len(request.body) > _DECODE_INLINE_BYTES:
            feeds = await self._loop.run_in_executor(self._pool, decode_inputs, request.body, ctype, model, self.max_array_bytes)
        else:
            feeds = decode_inputs(request.body, ctype, model, self.max_array_bytes)
        params = dict(p.split("=", 1) for p in request.query.split("&") if "=" in p)
        deadline = request.headers.get("x-deadline-ms") or params.get("deadline_ms")
        deadline_s = float(deadline) / 1000 if deadline else None
        timeout = deadline_s if deadline_s is not None else self.config.request_timeout_s
        outputs = await self._wait(rt.submit(name, feeds, deadline_s=deadline_s), timeout + 1.0,
                                   f"model {name} did not answer within {timeout:g}s")
        accept = request.headers.get("accept", "")
        if "application/x-npz" in accept:
            return Response(200, npz_bytes(outputs), "application/x-npz")
        if "application/x-npy" in accept and len(outputs) == 1:
            return Response(200, npy_bytes(next(iter(outputs.values()))), "application/x-npy")
        return json_response(200, {"model": name, "outputs": {k: v.tolist() for k, v in outputs.items()}})

    async def _wait(self, future: Future, timeout_s: float, message: str) -> Any:
        """Await a batcher's future from the loop (lighter than wrap_future + wait_for)."""
        loop = self._loop
        waiter = loop.create_future()

        def settle(f: Future) -> None:
            if waiter.done():
                return
            if f.cancelled():
                waiter.set_exception(DeadlineError(message))
            elif f.exception() is not None:
                waiter.set_exception(f.exception())
            else:
                waiter.set_result(f.result())

        def expire() -> None:
            if not waiter.done():
                future.cancel()  # still queued: it will not run
                waiter.set_exception(DeadlineError(message))

        future.add_done_callback(lambda f: loop.call_soon_threadsafe(settle, f))
        timer = loop.call_later(timeout_s, expire)
        try:
            return await waiter
        finally:
            timer.cancel()


def decode_inputs(body: bytes, content_type: str, model: Any, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Request body -> arrays keyed by input name, in the dtypes the model takes from callers."""
    ctype = content_type.split(";")[0].strip().lower()
    specs = {t.name: t for t in model.inputs}
    if ctype in ("application/x-npy", "application/octet-stream"):
        try:
            array = load_npy(body)
        except Exception as exc:
            raise InputError(f"body is not a .npy array: {exc}") from None
        if len(specs) != 1:
            raise InputError(f"this model takes {len(specs)} inputs ({', '.join(specs)}): send an .npz or JSON")
        return {next(iter(specs)): array}
    if ctype in ("application/x-npz", "application/zip"):
        return read_npz(body, what="the body", error=InputError, max_bytes=max_bytes)
    if ctype in ("application/json", ""):
        try:
            data = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise InputError(f"body is not JSON: {exc}") from None
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if inputs is None:
            raise InputError('JSON body must be {"inputs": {"<input name>": [[...]]}} (or a list for one input)')
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise InputError(f"this model takes inputs {', '.join(specs)}: key them by name")
            inputs = {next(iter(specs)): inputs}
        feeds = {}
        for key, value in inputs.items():
            spec = specs.get(key)
            floats = spec is None or spec.dtype.startswith("float") or spec.quantization is not None
            try:
                feeds[key] = np.asarray(value, dtype=np.float32 if floats else np.int64)
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {key} is not a rectangular array of numbers: {exc}") from None
        return feeds
    raise InputError(f"unsupported Content-Type {content_type!r}: use application/json, application/x-npy "
                     "or application/x-npz")
