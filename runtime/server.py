"""``edgec serve``: the serving core, its HTTP API and its telemetry agent, started and stopped together."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from .agent.telemetry import Telemetry
from .serve.api import Api
from .config import ServeConfig
from .serve.http import HttpServer
from .serve.runtime import Runtime
from .agent.updates import Updater


class Server:
    """The HTTP API (Open Inference Protocol and edgec's routes), with telemetry when the config has a
    ``[telemetry]`` table.

    ``start()`` serves from a background thread; ``serve_forever()`` blocks the calling one.

    Example:
        >>> server = Server(ServeConfig.from_toml("runtime.toml")).start()
        >>> server.url
        'http://127.0.0.1:8080'
        >>> server.stop()

    Raises:
        OSError: The address cannot be bound (port in use, no such interface).
        SpoolError: The telemetry spool cannot be opened.
    """

    def __init__(self, config: ServeConfig, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime(config)
        self._stopped = False
        self._stop_requested = threading.Event()
        # Before binding: a spool that cannot be opened fails here with nothing to undo.
        self.telemetry = Telemetry(config.telemetry, self.runtime) if config.telemetry is not None else None
        # Model updates from the fleet ([fleet] needs [telemetry]'s broker; checked by the config).
        self.updater = (Updater(self.runtime, config.telemetry, config.fleet, self.telemetry.publisher)
                        if config.fleet is not None and self.telemetry is not None else None)
        # Slow work (reloads, cold loads, decoding large bodies) runs here, off the event loop.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="edgec-http")
        self.grpc = None
        try:
            api = Api(self.runtime, self._pool)
            self.http = HttpServer(api, host=config.host, port=config.port, limits=config.http,
                                   shutdown_s=config.request_timeout_s)
            if config.grpc.port is not None:  # the Open Inference Protocol over gRPC too (edgec[grpc])
                from .serve.grpcapi import GrpcServer

                self.grpc = GrpcServer(self.runtime, host=config.host, port=config.grpc.port,
                                       token=config.admin_token,
                                       max_message_bytes=int((config.grpc.max_message_mb or config.max_request_mb)
                                                             * 2**20),
                                       max_concurrent_rpcs=config.grpc.max_concurrent_rpcs)
                api.extra_metrics.append(self.grpc.metrics_text)
        except BaseException:
            if getattr(self, "http", None) is not None:
                self.http.stop()  # (never started: its socket is closed)
            self._pool.shutdown()
            self.runtime.close(drain=False)
            if self.telemetry is not None:
                self.telemetry.publisher.spool.close()
            raise
        self.address = self.http.address
        self.grpc_address = self.grpc.address if self.grpc is not None else None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Server:
        if self.telemetry is not None:
            self.telemetry.start()
        self.http.start()
        if self.grpc is not None:
            self.grpc.start()
        if self.updater is not None:
            self.updater.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`request_stop` (a signal handler calls it) or the HTTP server ends; the caller then
        calls :meth:`stop`.

        The calling thread waits on an event, never in ``join()`` on the server's thread: CPython (3.11) marks a
        thread stopped when a signal's exception interrupts a ``join()`` on it, although it runs on, and the
        later ``stop()`` then returned at once and let the interpreter finalize under a running event loop
        (a segfault at exit, one SIGTERM in about ten).
        """
        self.start()
        while self.http.running and not self._stop_requested.wait(0.5):
            pass

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` return (safe from a signal handler)."""
        self._stop_requested.set()

    def stop(self, drain: bool = True) -> None:
        """Stop accepting; answer the requests in flight (``drain``) or fail them; close everything."""
        if self._stopped:
            return
        self._stopped = True
        if self.updater is not None:
            self.updater.stop()
        if not drain:
            self.runtime.close(drain=False)  # queued requests fail at once, and their HTTP answers go out
        if self.grpc is not None:
            self.grpc.stop(grace_s=self.config.request_timeout_s)
        self.http.stop(timeout_s=self.config.request_timeout_s + 5)
        self.runtime.close(drain=True)
        self._pool.shutdown(wait=False)
        if self.telemetry is not None:
            self.telemetry.stop()
