"""``edgec serve``: the serving core, its HTTP API and its telemetry agent, started and stopped together."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from .agent import Telemetry
from .api import Api
from .config import ServeConfig
from .http import HttpServer
from .serving import Runtime


class Server:
    """The HTTP API on an asyncio event loop, with telemetry when the config has a ``[telemetry]`` table.

    ``start()`` runs it in a background thread; ``serve_forever()`` in the calling one.

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
        # Before binding: a spool that cannot be opened fails here with nothing to undo.
        self.telemetry = Telemetry(config.telemetry, self.runtime) if config.telemetry is not None else None
        self._loop = asyncio.new_event_loop()
        # Slow work (reloads, cold loads, decoding large bodies) runs here, off the loop.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="edgec-http")
        self._stopped = False
        self._thread: threading.Thread | None = None
        api = Api(self.runtime, self._loop, self._pool, max_array_bytes=config.batcher.max_bytes)
        try:
            self.http = HttpServer(self._loop, api, host=config.host, port=config.port,
                                   max_body=int(config.max_request_mb * 2**20))
        except OSError:
            self._loop.close()
            self._pool.shutdown()
            self.runtime.close(drain=False)
            if self.telemetry is not None:
                self.telemetry.publisher.spool.close()
            raise
        self.address = self.http.address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> Server:
        if self.telemetry is not None:
            self.telemetry.start()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgec-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (``KeyboardInterrupt``), then call :meth:`stop`."""
        if self.telemetry is not None:
            self.telemetry.start()
        self._loop.run_forever()

    def stop(self, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (``drain``), then close everything."""
        if self._stopped:
            return
        self._stopped = True
        shutdown = self.http.close(drain, timeout_s, lambda: self._loop.run_in_executor(
            self._pool, self.runtime.close, drain))
        if self._thread is not None and self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(shutdown, self._loop)
            try:
                done.result(timeout_s + 5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
        else:
            self._loop.run_until_complete(shutdown)
        self._loop.close()
        self._pool.shutdown(wait=False)
        if self.telemetry is not None:
            self.telemetry.stop()
