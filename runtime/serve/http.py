"""HTTP/1.1 for the board: uvicorn with the httptools (llhttp) parser, and the limits a board needs.

uvicorn parses and answers HTTP (keep-alive, pipelining, chunked bodies, ``Expect:
100-continue``) and caps open connections; what it leaves out for slow or hostile clients
is added here, in a subclass of its protocol: a request head must arrive whole within
``header_timeout_s`` (so a connection that sends nothing, or a byte a minute, is closed
with 408) and within ``max_header_kb`` (else 431), and its body within ``body_timeout_s``.
The body's size limit is the application's (:mod:`edgec.runtime.serve.api`), which reads it as
it arrives.

Under pressure, slow clients give way to normal ones: with more than half of
``max_connections`` open, a request head gets a quarter of ``header_timeout_s``; with 90 % open,
each new connection closes the one that has waited longest for a head it has not finished
(a keep-alive connection between requests, a head sent a byte at a time). A normal client
sends its head at once, so it is the newest and never the one closed; 200 slow clients that
reconnect as fast as they are cut off cannot keep it out (``benchmarks/abuse.py``).

The server runs on its own event loop in a background thread; its socket is bound when the
:class:`HttpServer` is made, so a busy port fails at once, before anything starts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from ..._optional import need
from ..config import HttpConfig

log = logging.getLogger("edgec.runtime")
BACKLOG = 128
# Bodies of refused requests up to this size are read and dropped before the connection
# closes, so the client reads the answer instead of a reset; past it, it closes at once.
DRAIN_LIMIT = 64 * 2**20
IDLE, HEAD, BODY = 0, 1, 2  # where a connection is in receiving a request
PRESSURE, FULL = 0.5, 0.9  # shares of max_connections: shorter head deadlines; make room for new connections


def _protocol_class(limits: HttpConfig) -> type:
    """uvicorn's httptools protocol with a deadline and a size limit on every request head."""
    base = need("uvicorn.protocols.http.httptools_impl", extra="runtime", purpose="to serve HTTP").HttpToolsProtocol
    max_head = int(limits.max_header_kb * 1024)
    waiting: dict[Any, None] = {}  # connections waiting for a request head, oldest first

    class LimitedHttp(base):  # type: ignore[misc, valid-type]
        # Where the connection is in receiving a request, and since when. A deadline timer is
        # armed only when a call ends with a request still incomplete: a request that arrives
        # whole in one read (nearly all of them) costs no timer at all.
        _phase = IDLE
        _since = 0.0
        _timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _close_after_body = False
        _body_started = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) >= FULL * limits.max_connections:
                slowest = next((c for c in waiting if c is not self and c._idle()), None)
                if slowest is not None and slowest._phase == HEAD:
                    slowest._refuse(408, "closed to make room: the server is full and this connection has not sent "
                                    "a complete request")
                elif slowest is not None:  # between requests, an answer sent: closed as an idle timeout would
                    waiting.pop(slowest, None)
                    slowest.transport.close()
            self._enter(HEAD)  # a connection that never sends a request is closed like a slow one
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._phase == HEAD:  # count the head up to its blank line
                end = data.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4
                if self._head_bytes > max_head:
                    self._refuse(431, f"request head over {max_head} bytes")
                    return
            super().data_received(data)
            if self._phase != IDLE:
                self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase != HEAD:
                self._enter(HEAD)

        def on_headers_complete(self) -> None:
            self._enter(BODY)
            super().on_headers_complete()
            if self.cycle is not None:
                self.cycle.transport = _Corked(self.cycle.transport, self._close)

        def on_body(self, body: bytes) -> None:
            self._body_started = True
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._enter(IDLE)
            super().on_message_complete()
            if self._close_after_body:
                self.transport.close()

        def _close(self) -> None:
            """Close once the request's body is in: closing on a client still sending resets the
            connection, and it never reads the answer (a 413 to a client that said
            ``Connection: close``). Bodies declared past ``DRAIN_LIMIT`` are not waited for."""
            length = next((v for k, v in self.headers if k == b"content-length"), b"")
            # A client that waits for "100 Continue" and got an answer instead sends nothing more.
            waiting = self.expect_100_continue and not self._body_started
            if self._phase == BODY and not waiting and (not length.isdigit() or int(length) <= DRAIN_LIMIT):
                self._close_after_body = True
            else:
                self.transport.close()

        def _enter(self, phase: int) -> None:
            self._phase, self._since = phase, self.loop.time()
            waiting.pop(self, None)
            if phase != BODY:  # a new connection, or one between requests: waiting for a head
                waiting[self] = None
            if self._timer is not None:  # the new phase has its own deadline, armed when data comes in
                self._timer.cancel()
                self._timer = None
            if phase == HEAD:
                self._head_bytes, self._body_started = 0, False

        def _idle(self) -> bool:
            """Waiting for a request head and owing no answer (a request being answered is IDLE too)."""
            return self._phase == HEAD or (self._phase == IDLE and (self.cycle is None or self.cycle.response_complete))

        def _limit(self) -> float:
            if self._phase != HEAD:
                return limits.body_timeout_s
            busy = len(self.connections) > PRESSURE * limits.max_connections
            return limits.header_timeout_s / 4 if busy else limits.header_timeout_s

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_at(self._since + self._limit(), self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self._phase == IDLE or self.transport.is_closing():
                return
            limit = self._limit()
            if self.loop.time() < self._since + limit:  # a later phase, with its own deadline
                self._arm()
            elif self._phase == HEAD:
                self._refuse(408, f"no complete request head within {limit:g}s")
            elif self.cycle is not None and not self.cycle.response_started:
                self._refuse(408, f"the body did not arrive within {limits.body_timeout_s:g}s")
            else:
                self.transport.close()

        def _refuse(self, status: int, message: str) -> None:
            self._phase = IDLE
            waiting.pop(self, None)
            if self.transport.is_closing():
                return
            body = ('{"error": "%s"}' % message).encode()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()

    return LimitedHttp


class _Corked:
    """A transport that sends a response's head together with its body: one write, one segment.

    uvicorn writes the status line and headers, then the body, as two writes; on a small
    answer each is a system call and a TCP segment of its own. The head is held until the
    next write (or close); an interim ``100 Continue`` goes out at once. ``close`` is the
    protocol's, which waits for a body still arriving.
    """

    def __init__(self, transport: Any, close: Any) -> None:
        self._transport = transport
        self._close = close
        self._held = b""

    def write(self, data: bytes) -> None:
        if not self._held and data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._held = data
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._transport.write(data)

    def close(self) -> None:
        if self._held:
            self._transport.write(self._held)
            self._held = b""
        self._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed, else asyncio's.

    uvloop's transports, timers and polling are C: measured on the digits CNN over HTTP, it
    took a trivial route from 13k to 15.5k requests/s and batched inference from about
    3,300 to 4,900 requests/s on 2 cores.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port).

    Raises:
        OSError: The address cannot be bound (port in use, no such interface).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off only on sockets that say so,
    # and with it on, a reply written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Serves an ASGI application on ``host:port`` from a background thread.

    Args:
        app: The ASGI application.
        host, port: Where to listen (port 0: any free port).
        limits: Connection limits.
        shutdown_s: How long :meth:`stop` waits for requests in flight.

    Raises:
        OSError: The address cannot be bound.
        MissingDependencyError: uvicorn or httptools is not installed.
    """

    def __init__(self, app: Any, *, host: str, port: int, limits: HttpConfig, shutdown_s: float = 10.0) -> None:
        uvicorn = need("uvicorn", extra="runtime", purpose="to serve HTTP")
        need("httptools", extra="runtime", purpose="to serve HTTP")
        self.socket = bind(host, port)
        self.address: tuple[str, int] = self.socket.getsockname()[:2]
        config = uvicorn.Config(
            app, http=_protocol_class(limits), lifespan="off", log_config=None, access_log=False,
            server_header=False, date_header=False, proxy_headers=False, timeout_keep_alive=limits.idle_timeout_s,
            limit_concurrency=limits.max_connections, timeout_graceful_shutdown=shutdown_s, backlog=BACKLOG,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def start(self) -> HttpServer:
        """Start serving in a background thread; return once it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="edgec-http", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.005)
        if self._failed is not None:
            raise self._failed
        return self

    def _run(self) -> None:
        loop = new_event_loop()
        try:  # not the main thread: uvicorn leaves signals to the caller
            loop.run_until_complete(self._server.serve(sockets=[self.socket]))
        except BaseException as exc:  # reported to start(), or logged once serving
            self._failed = exc
            if self._server.started:
                log.exception("the HTTP server stopped")
        finally:
            loop.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the server thread ends (or ``timeout_s``)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop accepting; answer the requests in flight (up to the shutdown time); close connections."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        else:
            self.socket.close()
