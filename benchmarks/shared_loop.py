"""One thread driving the sockets of many paho clients, for simulating thousands of boards on one host.

On a board, paho runs a network thread per connection (``loop_start``): it wakes every second and
watches one socket with ``select()``. Ten thousand simulated boards would be ten thousand such
threads, waking ten thousand times a second, and ``select()`` takes no descriptor above 1023. Here
one thread per worker process watches all of its boards' sockets with epoll through paho's own
external-loop API (``on_socket_open``/``close``/``register_write``, ``loop_read``/``loop_write``/
``loop_misc``) and reconnects with backoff as ``loop_start`` would. The MQTT sessions, the packets and
every callback of edgec's board code are the same; only the thread that moves the bytes differs.
"""

from __future__ import annotations

import os
import random
import selectors
import threading
import time
from typing import Any

MISC_EVERY_S = 1.0  # paho's keepalive and timeouts, as loop_forever checks them


class SharedLoop:
    def __init__(self, reconnect_max_s: float = 5.0) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        self._writers: set[Any] = set()
        self._due: dict[Any, tuple[float, float]] = {}  # client -> (when to reconnect, the next delay)
        self._reconnect_max_s = reconnect_max_s
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        threading.Thread(target=self._run, name="edgec-sim-mqtt", daemon=True).start()

    def adopt(self, client: Any) -> None:
        """Take over ``client`` after ``connect_async`` (in place of its ``loop_start``)."""
        client.on_socket_open = lambda c, u, sock: self._register(c, sock)
        client.on_socket_close = lambda c, u, sock: self._unregister(sock)
        client.on_socket_register_write = lambda c, u, sock: self._want_write(c)
        client.on_socket_unregister_write = lambda c, u, sock: self._done_writing(c)
        with self._lock:
            self._clients.append(client)
            self._due[client] = (time.monotonic(), 1.0)
        self._poke()

    def _register(self, client: Any, sock: Any) -> None:
        with self._lock:
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _unregister(self, sock: Any) -> None:
        with self._lock:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass

    def _want_write(self, client: Any) -> None:
        with self._lock:  # (from the thread that published)
            self._writers.add(client)
        self._poke()

    def _done_writing(self, client: Any) -> None:
        # paho clears its "registered" flag before this call: a packet queued by another thread in between
        # registers again, and must not be forgotten here (else the client never writes again)
        with self._lock:
            if not client.want_write():
                self._writers.discard(client)

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _lost(self, client: Any) -> None:
        with self._lock:
            self._writers.discard(client)
            self._due.setdefault(client, (time.monotonic() + 1.0, 1.0))

    def _run(self) -> None:
        misc = time.monotonic() + MISC_EVERY_S
        while True:
            for key, _ in self._selector.select(timeout=max(0.0, misc - time.monotonic())):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                elif key.data.loop_read() != 0:
                    self._lost(key.data)
            with self._lock:
                writers = list(self._writers)
            for client in writers:
                if client.loop_write() != 0:
                    self._lost(client)
            now = time.monotonic()
            if now >= misc:
                misc = now + MISC_EVERY_S
                for client in list(self._clients):
                    if client in self._due:
                        continue
                    if client.loop_misc() != 0 or (client.want_write() and client.loop_write() != 0):
                        self._lost(client)  # (a write the callbacks missed goes out here, a second late)
                self._reconnect_due(now)

    def _reconnect_due(self, now: float) -> None:
        with self._lock:
            due = [(c, delay) for c, (when, delay) in self._due.items() if when <= now]
        for client, delay in due:
            try:
                client.reconnect()  # connects, opens the socket (registered above) and queues CONNECT
                with self._lock:
                    del self._due[client]
            except OSError:
                delay = min(self._reconnect_max_s, delay * 2)
                with self._lock:
                    self._due[client] = (now + delay * random.uniform(0.5, 1.0), delay)
