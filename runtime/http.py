"""HTTP/1.1 on one asyncio event loop: parsing, keep-alive, limits; no knowledge of models.

Requests on one connection are answered in order; parsing and answering never wait for a
handler's slow work, which runs wherever the handler puts it. A thread per connection, as
the standard library's server has, spent ~0.5 ms of CPU per request in thread switches and
GIL hand-offs on a 2-core host, several times what a small CNN costs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger("edgec.runtime")
# Oversized bodies up to this size are read and dropped after the 413 so the client reads
# the answer instead of a connection reset; past it the connection is closed at once.
DRAIN_LIMIT = 64 * 2**20
MAX_HEADER_BYTES = 64 * 2**10


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    ctype: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json", headers or {})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


class HTTPError(Exception):
    """A request that cannot be parsed; the connection closes after the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Connection(asyncio.Protocol):
    """One client connection: parses requests in order and answers each in turn."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered; later ones wait in the buffer
        self.closed = False
        self.discard = 0  # bytes of an oversized body still to drop
        self.head: tuple[Request, int, bool] | None = None  # parsed head waiting for its body

    # -- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.discard:
            dropped = min(self.discard, len(data))
            self.discard -= dropped
            if not self.discard:
                self._close()
            return
        self.buffer += data
        if self.busy and len(self.buffer) > MAX_HEADER_BYTES + self.server.max_body:
            self.transport.pause_reading()  # a client pipelining faster than we answer
        self._next()

    # -- requests ---------------------------------------------------------------------------
    def _next(self) -> None:
        while not self.busy and not self.closed and self.discard == 0:
            try:
                request = self._parse()
            except HTTPError as exc:
                self._write(error_response(exc.status, str(exc)), close=True)
                return
            if request is None:
                return
            self.busy = True
            self.server._inflight += 1
            self.server._loop.create_task(self._answer(request))

    def _parse(self) -> Request | None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    raise HTTPError(431, f"request headers over {MAX_HEADER_BYTES} bytes")
                return None
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise HTTPError(400, f"malformed request line {lines[0][:80]!r}")
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if not sep:
                    raise HTTPError(400, f"malformed header line {line[:80]!r}")
                headers[key.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise HTTPError(411, "chunked request bodies are not supported: send Content-Length")
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                raise HTTPError(400, f"bad Content-Length {headers.get('content-length')!r}")
            connection = headers.get("connection", "").lower()
            keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
            path, _, query = target.partition("?")
            request = Request(method, path, query, headers)
            if length > self.server.max_body:
                self._refuse_body(length, expecting="100-continue" in headers.get("expect", "").lower())
                return None
            if length and "100-continue" in headers.get("expect", "").lower() and len(self.buffer) < length:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.head = (request, length, keep)
        request, length, keep = self.head
        if len(self.buffer) < length:
            return None
        self.head = None
        request.body = bytes(self.buffer[:length])
        del self.buffer[:length]
        request.headers["connection"] = "keep-alive" if keep else "close"
        return request

    def _refuse_body(self, length: int, expecting: bool) -> None:
        """413 now; drop the body the client still sends (unless it waits for 100-continue)."""
        message = f"body of {length} bytes is over the {self.server.max_body} byte limit"
        self._write(error_response(413, message), close=expecting or length > DRAIN_LIMIT)
        if not expecting and length <= DRAIN_LIMIT:
            have = min(len(self.buffer), length)
            del self.buffer[:have]
            self.discard = length - have
            if not self.discard:
                self._close()

    async def _answer(self, request: Request) -> None:
        try:
            if self.server._stopping:
                response = error_response(503, "the server is shutting down", {"Retry-After": "1"})
            else:
                response = await self.server.handler(request)
        except Exception as exc:  # nothing a request does may take the server down
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(500, f"internal error: {exc}")
        finally:
            self.server._inflight -= 1
        if self.closed:
            return  # the client went away while its request ran
        self._write(response, close=request.headers["connection"] == "close" or self.server._stopping)
        self.busy = False
        if not self.closed:
            self.transport.resume_reading()
            self._next()

    def _write(self, response: Response, *, close: bool = False) -> None:
        if self.closed:
            return
        phrase = HTTPStatus(response.status).phrase
        head = [f"HTTP/1.1 {response.status} {phrase}", f"Content-Type: {response.ctype}",
                f"Content-Length: {len(response.body)}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        if close:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        if close and not self.discard:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.transport.close()  # sends what is buffered first


class HttpServer:
    """Listens on ``host:port`` and answers every request with ``handler(request)``.

    Args:
        loop: The event loop it runs on (the caller runs the loop).
        handler: ``async handler(request) -> Response``; it must not raise for a bad request.
        host, port: Where to listen (port 0: any free port).
        max_body: Largest request body taken; larger ones get 413.

    Raises:
        OSError: The address cannot be bound (port in use, no such interface).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Callable[[Request], Awaitable[Response]], *,
                 host: str, port: int, max_body: int) -> None:
        self._loop = loop
        self.handler = handler
        self.max_body = max_body
        self._connections: set[Connection] = set()
        self._inflight = 0
        self._stopping = False
        self._server = loop.run_until_complete(loop.create_server(
            lambda: Connection(self), host, port, backlog=128, reuse_address=True))
        self.address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]

    @property
    def inflight(self) -> int:
        """Requests being answered now."""
        return self._inflight

    async def close(self, drain: bool, timeout_s: float, before_close: Callable[[], Awaitable[None]]) -> None:
        """Stop accepting; wait for requests in flight (``drain``); run ``before_close``; close connections."""
        self._stopping = True
        self._server.close()
        until = time.monotonic() + timeout_s
        while drain and self._inflight and time.monotonic() < until:
            await asyncio.sleep(0.01)
        await before_close()
        for conn in list(self._connections):
            conn._close()
        await asyncio.sleep(0)  # let the transports flush and close
